"""``graphrt show``: draw a policy's graph before and after the pass pipeline.

Output by suffix: ``.txt`` (the printed IR), ``.dot`` (Graphviz source),
``.svg``/``.png`` (Graphviz's ``dot`` when installed, else a networkx/matplotlib
drawing), ``.json`` (the optimised graph, loadable by ``generate --policy``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from graphrt.frontends.policies import MODES

EXAMPLES = """examples:
  graphrt show --mode self-spec --out self_spec.svg            # before (O0) and after (O1) the passes
  graphrt show --mode diffusion --opt 0 --out diffusion.txt    # the graph as built, as text
  graphrt show --policy my_policy.py --out mine.png
  graphrt show --mode self-spec --out self_spec.json           # then: graphrt generate --policy self_spec.json
"""
SUFFIXES = (".txt", ".dot", ".svg", ".png", ".json")


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``show``."""
    p = sub.add_parser("show", help="draw a policy's graph before and after the passes",
                       description=__doc__.splitlines()[0], epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--mode", default=None, choices=MODES, help="a built-in mode (default: ar)")
    src.add_argument("--policy", default=None, metavar="FILE", help="a .py file defining a Policy, or a JSON graph")
    p.add_argument("--opt", type=int, default=1, choices=(0, 1, 2), help="pass pipeline level drawn after O0")
    p.add_argument("--model", default=None, metavar="DIR|FILE.gguf|NAME",
                   help="build for this checkpoint's config (a directory, GGUF file or named model; default: the "
                        "shipped model's)")
    p.add_argument("--block-length", type=int, default=None)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--out", required=True, metavar="FILE", help="FILE.svg, .png, .dot, .txt or .json")
    p.add_argument("--json", default=None, metavar="FILE", help="write a JSON record ('-' for standard output)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``graphrt show``."""
    import graphrt
    from graphrt.frontends.cli.output import write_json
    from graphrt.frontends.models.loader import read_model_config

    out = Path(args.out)
    if out.suffix.lower() not in SUFFIXES:
        raise ValueError(f"--out: expected a file ending in one of {SUFFIXES}, found {args.out!r}")
    if not out.parent.is_dir() if str(out.parent) else False:
        raise ValueError(f"--out: expected an existing directory for {out}, found none")
    if args.policy is not None:
        if args.block_length is not None or args.threshold is not None:
            raise ValueError(f"--block-length/--threshold: apply to --mode, not to --policy {args.policy}")
        from graphrt.frontends.policies.files import load_policy_file

        policy = load_policy_file(args.policy)
    else:
        from graphrt.frontends.policies import policy_for_mode

        policy = policy_for_mode(args.mode or "ar", args.block_length, args.threshold)
    config = read_model_config(args.model).to_backbone_config()
    try:
        compiled = graphrt.compile(policy, _ConfigOnly(config), opt_level=args.opt)
    except graphrt.GraphError as e:
        raise ValueError(f"{args.policy or policy.name}: {e}") from None
    graphs = [("O0", compiled.reference)] + ([(f"O{args.opt}", compiled.graph)] if args.opt else [])
    how = draw_graphs(graphs, out, policy, compiled.overshoot)
    sizes = {tag: g.num_nodes() for tag, g in graphs}
    print(f"wrote {out} ({how}; nodes: {', '.join(f'{t} {n}' for t, n in sizes.items())})", file=sys.stderr)
    write_json(args.json, {"policy": policy.name, "out": str(out), "renderer": how, "nodes": sizes})
    return 0


class _ConfigOnly:
    """What :func:`graphrt.compile` needs of a model: its config (no weights are loaded to draw a graph)."""

    def __init__(self, config: Any) -> None:
        self.config = config


def draw_graphs(graphs: list[tuple[str, Any]], out: Path, policy: Any, overshoot: int) -> str:
    """Write ``graphs`` (``[(tag, graph)]``, before then after) to ``out``; returns the renderer used."""
    from graphrt.printer import format_graph, to_dot

    suffix = out.suffix.lower()
    if suffix == ".txt":
        out.write_text("\n\n".join(f"# {policy.name} at {tag}\n{format_graph(g)}" for tag, g in graphs) + "\n")
        return "text"
    if suffix == ".json":
        from graphrt.frontends.policies.files import policy_document

        out.write_text(json.dumps(policy_document(policy, graphs[-1][1], overshoot), indent=1) + "\n")
        return "json"
    dot_src = _side_by_side([(tag, to_dot(g)) for tag, g in graphs], policy.name)
    if suffix == ".dot":
        out.write_text(dot_src + "\n")
        return "dot source"
    dot = shutil.which("dot")
    if dot is not None:
        subprocess.run([dot, f"-T{suffix[1:]}", "-o", str(out)], input=dot_src, text=True, check=True)
        return "graphviz"
    _draw_matplotlib(graphs, out, policy.name)
    return "networkx/matplotlib"


def _side_by_side(dots: list[tuple[str, str]], name: str) -> str:
    """One DOT digraph holding each graph's DOT body as a cluster (node names prefixed per graph)."""
    import re

    parts = [f'digraph "{name}" {{', "  rankdir=TB; newrank=true;", '  node [shape=box, fontname="monospace"];']
    for tag, src in dots:
        body = src.split("\n")[3:-1]  # drop the header lines and the closing brace of to_dot
        body = [re.sub(r'"([^"]*)"(?=\s*(\[|->|;))', lambda m, t=tag: f'"{t}:{m.group(1)}"', line)
                for line in body]
        body = [re.sub(r"\b(in_\d+)\b(?=\s*(\[|->))", lambda m, t=tag: f'"{t}:{m.group(1)}"', line) for line in body]
        parts += [f'  subgraph "cluster_{tag}" {{', f'    label="{name} at {tag}"; fontsize=20;', *body, "  }"]
    parts.append("}")
    return "\n".join(parts)


def _regions(graph: Any, label: str) -> list[tuple[str, Any]]:
    """``graph`` and every nested region, each with a label (``prologue``, ``loop loop_3``, ...)."""
    out = [(label, graph)]
    for node in graph.nodes:
        for k, region in enumerate(node.regions):
            out += _regions(region, f"{node.op} {node.name}" + (f" [{k}]" if len(node.regions) > 1 else ""))
    return out


def _draw_matplotlib(graphs: list[tuple[str, Any]], out: Path, name: str) -> None:
    """Layered drawings of each graph's dataflow (``to_networkx()``), one panel per region; a row per graph."""
    from graphrt.frontends.cli.output import pyplot

    plt = pyplot(str(out))
    panels = [_regions(g, "prologue") for _, g in graphs]
    cols = max(len(p) for p in panels)
    fig, axes = plt.subplots(len(graphs), cols, figsize=(7 * cols, 9 * len(graphs)), squeeze=False)
    for row, ((tag, graph), regions) in enumerate(zip(graphs, panels)):
        for col in range(cols):
            ax = axes[row][col]
            ax.axis("off")
            if col < len(regions):
                label, region = regions[col]
                _draw_panel(ax, region)
                ax.set_title(f"{name} at {tag}: {label} ({len(region.nodes)} nodes; {graph.num_nodes()} in all)",
                             fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def _draw_panel(ax: Any, graph: Any) -> None:
    import networkx as nx

    g = graph.to_networkx()
    ops = {n.name: n.op for n in graph.nodes}
    for layer, nodes in enumerate(nx.topological_generations(g)):
        for n in nodes:
            g.nodes[n]["layer"] = layer
    pos = nx.multipartite_layout(g, subset_key="layer", align="horizontal", scale=1.0)
    pos = {n: (x, -y) for n, (x, y) in pos.items()}
    hot = ("forward", "emit", "commit", "loop")
    colors = ["#ffe0b0" if ops.get(n) in hot else ("#dbe8f6" if n.startswith("input:") else "#eeeeee")
              for n in g.nodes]
    labels = {n: (n.removeprefix("input:") if n.startswith("input:") else ops.get(n, n)) for n in g.nodes}
    nx.draw_networkx_edges(g, pos, ax=ax, arrows=True, arrowsize=6, width=0.5, edge_color="#888888")
    nx.draw_networkx_nodes(g, pos, ax=ax, node_color=colors, node_size=260, node_shape="s")
    nx.draw_networkx_labels(g, pos, labels, ax=ax, font_size=6, font_family="monospace")
