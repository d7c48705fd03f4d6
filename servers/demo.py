"""The whole method on a laptop: examples/demo through every stage of ReFineG, against a simulated MLLM.

`make demo` runs this. It starts servers/simulated_mllm.py on a free port of 127.0.0.1 (refinement and
grounding answers derived from the demo's gold, right `accuracy` of the time; synthesis answers that
recombine the seed sent, without the gold), runs refineg.main against it, and stops the server whatever
happens (an error, Ctrl-C). The run itself records that its MLLM was simulated: metrics.json and
usage.json ("mllm"), and the first lines of the summary.

    python -m servers.demo --out runs/demo                # more refineg.py flags may follow, e.g. --viz 3

Left out on purpose: a real MLLM (the same run against one: refineg.py --llm-url, see the README), and a
simulated world beyond --data (a --test folder's texts are unknown to the simulator: answered as guesses).
"""

import argparse
import dataclasses
import sys
from dataclasses import dataclass

import refineg
from data import DataError, setting
from servers.simulated_mllm import SimConfig, SimulatedMLLM, load_world


@dataclass
class LaptopConfig:
    data: str = setting(
        "examples/demo", "labelled data to run on; also the simulated MLLM's gold (its world)"
    )
    out: str = setting("runs/demo", "run directory")
    accuracy: float = setting(
        0.8, "chance that the simulated MLLM is right (refinement, grounding; synthesis faults)"
    )
    synth_per_seed: int = setting(
        3,
        "synthetic sentences per seed (paper: 30); 3 keep the demo's tagger at its minimum of 60 training "
        "steps (the 22 seeds and the sentences kept fill about 5 batches an epoch)",
    )


def parser() -> argparse.ArgumentParser:
    """One flag per LaptopConfig field (its help beside it); unknown flags go to refineg.py."""
    ap = argparse.ArgumentParser(prog="python -m servers.demo", description=__doc__.split("\n\n")[0])
    for f in dataclasses.fields(LaptopConfig):
        flag = f"--{f.name.replace('_', '-')}"
        ap.add_argument(flag, type=type(f.default), default=f.default, help=f.metadata["help"])
    return ap


def refineg_args(c: LaptopConfig, sim: SimulatedMLLM, more: list[str]) -> list[str]:
    """refineg.py's flags for the run: the model name is sent, so the answer cache of a run against one
    accuracy is never replayed for another."""
    return [
        *("--data", c.data, "--out", c.out),
        *("--llm-url", sim.url, "--llm-model", sim.model),
        *("--synth-per-seed", str(c.synth_per_seed)),
        *more,
    ]


def main(argv: list[str] | None = None) -> int:
    """refineg.main's exit code; 2 for a bad flag or unreadable data, 130 for Ctrl-C."""
    args, more = parser().parse_known_args(argv)
    c = LaptopConfig(**vars(args))
    if not 0 <= c.accuracy <= 1:
        print(f"error: --accuracy: expected a probability in [0, 1], got {c.accuracy}", file=sys.stderr)
        return 2
    try:
        gold, sizes = load_world(c.data)
        config = SimConfig(c.accuracy, c.accuracy, c.accuracy)
        with SimulatedMLLM(gold, sizes, config) as sim:
            flags = refineg_args(c, sim, more)
            print(f"demo: {sim.model} serves {sim.url}; running python refineg.py {' '.join(flags)}")
            return refineg.main(flags)
    except (DataError, FileNotFoundError) as err:
        print(f"error: --data {c.data}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # refineg.main answers Ctrl-C itself; this one came before or after it
        print("\ninterrupted; the simulated MLLM is stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
