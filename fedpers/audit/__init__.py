"""Privacy audit reports: read a run directory (never the live system) and show every claim with its evidence."""
