"""Benchmark: one local DP-SGD step against the same step without DP, side by side in one run.

Both modes train the same LoRA adapter (q/v projections) of the same base model on the same fixed
batches (batch 8, sequence 128); steps alternate between the modes so that machine noise hits both
alike. Peak memory of each mode is measured in its own child process (ru_maxrss). Results are
printed and, with ``--write``, put into BENCHMARKS.md between markers.

    python -m simulations.bench_dp_step --write
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer

from fedpers.models import (
    EncodedExample,
    LoraSettings,
    PersonalizedLM,
    attach_lora,
    collate,
    load_base_model,
)
from fedpers.models.chat import IGNORE_INDEX

ROOT = Path(__file__).resolve().parent.parent
MARK = "dp-step"


@dataclass
class Stepper:
    """One training step of a given mode on a fixed model."""

    forward: torch.nn.Module
    optimizer: torch.optim.Optimizer

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.forward(**batch).mean().backward()
        self.optimizer.step()


def fixed_batch(vocab: int, batch: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(batch):
        ids = torch.randint(10, vocab, (length,), generator=g).tolist()
        labels = [IGNORE_INDEX] * (length // 4) + ids[length // 4 :]
        examples.append(EncodedExample(tuple(ids), tuple(labels)))
    return collate(examples, pad_token_id=0)


def build(model_name: str, top_layers: int | None, dp: bool) -> Stepper:
    base, _ = load_base_model(model_name)
    lm = attach_lora(
        base,
        LoraSettings(r=8, alpha=16, target_modules=("q_proj", "v_proj"), top_layers=top_layers),
    )
    model = PersonalizedLM(lm)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    if not dp:
        return Stepper(model, optimizer)
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    dp_optimizer = DPOptimizer(
        optimizer, noise_multiplier=1.0, max_grad_norm=0.01, expected_batch_size=8
    )
    return Stepper(gsm, dp_optimizer)


def time_interleaved(args: argparse.Namespace) -> dict:
    steppers = {
        "no_dp": build(args.model, args.top_layers, False),
        "dp": build(args.model, args.top_layers, True),
    }
    vocab = steppers["dp"].forward._module.lm.get_input_embeddings().num_embeddings
    batch = fixed_batch(vocab, args.batch_size, args.seq_len)
    times: dict[str, list[float]] = {k: [] for k in steppers}
    for i in range(args.warmup + args.steps):
        order = list(steppers) if i % 2 == 0 else list(reversed(steppers))
        for mode in order:
            start = time.perf_counter()
            steppers[mode].step(batch)
            if i >= args.warmup:
                times[mode].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {"median_s": median, "ratio": median["dp"] / median["no_dp"], "steps": args.steps}


def _peak_gb() -> float:
    """This process's peak resident memory (VmHWM). Unlike ru_maxrss it is not inherited across fork/exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def peak_memory(args: argparse.Namespace, mode: str) -> dict[str, float]:
    """Peak resident memory (GB) of a child process: after building the model, and after 3 steps of ``mode``."""
    cmd = [
        sys.executable,
        "-m",
        "simulations.bench_dp_step",
        "--child",
        mode,
        "--model",
        args.model,
        "--top-layers",
        str(args.top_layers or 0),
        "--batch-size",
        str(args.batch_size),
        "--seq-len",
        str(args.seq_len),
        "--steps",
        "3",
        "--warmup",
        "0",
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def child(args: argparse.Namespace) -> None:
    stepper = build(args.model, args.top_layers, args.child == "dp")
    module = stepper.forward._module if args.child == "dp" else stepper.forward
    batch = fixed_batch(
        module.lm.get_input_embeddings().num_embeddings, args.batch_size, args.seq_len
    )
    loaded = _peak_gb()
    for _ in range(args.steps):
        stepper.step(batch)
    print(json.dumps({"loaded_gb": loaded, "peak_gb": _peak_gb()}))


def print_section(lines: list[str], write: bool, mark: str = MARK) -> None:
    """Print a benchmark's section and, with ``write``, put it into BENCHMARKS.md."""
    section = "\n".join(lines)
    print(section)
    if write:
        write_benchmarks(section, mark)


def write_benchmarks(section: str, mark: str = MARK) -> None:
    """Put ``section`` into BENCHMARKS.md between the markers of ``mark`` (replacing an earlier one)."""
    path = ROOT / "BENCHMARKS.md"
    text = (
        path.read_text()
        if path.exists()
        else "# Benchmarks\n\nFigures below come from the scripts in `simulations/`, run on the machine named with each table.\n"
    )
    begin, end = f"<!-- {mark}:begin -->", f"<!-- {mark}:end -->"
    block = f"{begin}\n{section}\n{end}"
    if begin in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def measure(args: argparse.Namespace) -> dict:
    timing = time_interleaved(args)
    memory = {mode: peak_memory(args, mode) for mode in ("no_dp", "dp")}
    return {"timing": timing, "memory": memory}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--model", default="smollm2", help="'smollm2', 'tiny' or a local HF directory")
    p.add_argument(
        "--layers",
        default="6,0",
        help="LoRA placements to measure: top N layers each (0 = all layers)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--write", action="store_true", help="write the result into BENCHMARKS.md")
    p.add_argument("--child", choices=["dp", "no_dp"], help=argparse.SUPPRESS)
    p.add_argument("--top-layers", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    if args.child:
        args.top_layers = args.top_layers or None
        child(args)
        return 0
    rows = [
        f"## Local DP-SGD step vs the same step without DP ({args.model})",
        "",
        f"`python -m simulations.bench_dp_step --write` — LoRA r=8 on q_proj/v_proj, batch {args.batch_size}, sequence "
        f"{args.seq_len}, Adam; Opacus hooks mode, flat clipping. Median of {args.steps} steps per mode, the modes "
        f"alternating step by step in one process, after {args.warmup} warm-up steps; peak resident memory of each mode "
        f"in its own process (VmHWM after loading the model, and after 3 steps). Machine: {platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}.",
        "",
        "| LoRA layers | step without DP (s) | DP-SGD step (s) | DP / non-DP | peak memory without DP (GB) | peak memory DP (GB) | after model load (GB) |",
        "|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for layers in (int(x) for x in args.layers.split(",")):
        args.top_layers = layers or None
        r = measure(args)
        t, m = r["timing"], r["memory"]
        name = "all" if layers == 0 else f"top {layers}"
        rows.append(
            f"| {name} | {t['median_s']['no_dp']:.3f} | {t['median_s']['dp']:.3f} | **{t['ratio']:.3f}** | "
            f"{m['no_dp']['peak_gb']:.2f} | {m['dp']['peak_gb']:.2f} | {m['dp']['loaded_gb']:.2f} |"
        )
        verdicts.append(
            f"{name}: ratio {t['ratio']:.3f} ({'met' if t['ratio'] <= 1.10 else 'NOT met'}), "
            f"DP peak {m['dp']['peak_gb']:.2f} GB ({'met' if m['dp']['peak_gb'] < 4 else 'NOT met'})"
        )
        print(rows[-1], flush=True)
    rows += [
        "",
        "Targets: DP / non-DP step-time ratio at most 1.10, peak memory under 4 GB. "
        + "; ".join(verdicts)
        + ".",
    ]
    print_section(rows, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
