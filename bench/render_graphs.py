"""Render a mode's graph before (O0) and after (O1) the default pipeline as PNG (needs graphviz's ``dot``).

Run: ``python bench/render_graphs.py [--mode ar] [--out docs/img]`` -> ``<mode>_O0.png``, ``<mode>_O1.png``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from graphrt.backbone import BackboneConfig
from graphrt.frontends import policies
from graphrt.passes import default_pipeline
from graphrt.printer import to_dot

CONFIG = BackboneConfig(vocab_size=96, max_positions=256, mask_token_id=95, bos_token_id=1, eos_token_id=2,
                        block_size=4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="ar", choices=policies.MODES)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "img")
    args = parser.parse_args()
    dot = shutil.which("dot")
    if dot is None:
        raise SystemExit("render_graphs: graphviz 'dot' not found on PATH (apt-get install graphviz)")
    before = policies.policy_for_mode(args.mode).build(CONFIG)
    after = default_pipeline(1).run(before).graph
    args.out.mkdir(parents=True, exist_ok=True)
    for tag, graph in (("O0", before), ("O1", after)):
        target = args.out / f"{args.mode.replace('-', '_')}_{tag}.png"
        subprocess.run([dot, "-Tpng", "-Gdpi=60", "-o", str(target)], input=to_dot(graph), text=True, check=True)
        print(f"wrote {target} ({graph.num_nodes()} nodes)")


if __name__ == "__main__":
    main()
