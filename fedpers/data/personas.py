"""The personas of the synthetic IT service desk, by name.

Kept apart from :mod:`fedpers.data.synthetic` (which loads its phrase banks when imported) so that the
settings (:mod:`fedpers.federated`), and every process that reads them, can name the default personas
without loading the banks.
"""

PERSONAS = ("leadership", "knowledge_worker", "field_worker", "admin_hr", "new_employee")
