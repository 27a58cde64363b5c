"""Stored artefacts are data: no OmegaConf interpolation in them is ever resolved unchecked.

Hydra's ``instantiate`` resolves every ``${...}`` in the plain dicts it is given, so a string such as
``${oc.create:{_target_: shutil.copyfile, ...}}`` stored in a checkpoint's hyper-parameters or in a
``dataset.json`` class name would build and call what it names, past the ``_target_`` allowlist of
:mod:`uaseg.runs.trust`. Two rules:

* files uaseg writes as resolved data (checkpoints, ``dataset.json``, fingerprints, plans) may hold
  no ``${`` at all (:func:`refuse_interpolations`);
* a resumed run's ``.hydra/config.yaml`` legitimately holds the interpolations of ``conf/``; each is
  parsed with OmegaConf's own grammar before anything resolves, and only the side-effect-free
  resolvers of :data:`RESOLVERS` are allowed (:func:`check_resolvers`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

from uaseg.errors import CheckpointError, UserError

#: resolvers a stored run config may use: node selection, the time, Hydra's own values, and
#: uaseg's (uaseg/config/resolvers.py, all pure functions of their arguments); ``uaseg.dataset_plan`` and
#: ``oc.env`` only in the forms of :data:`PLAN` and :data:`ENV_NAMES`
RESOLVERS = frozenset({"oc.select", "now", "hydra", "uaseg.wandb_offline", "uaseg.job_name", "uaseg.job_group",
                       "uaseg.run_dir", "uaseg.job_subdir", "uaseg.hydra_subdir", "uaseg.get", "uaseg.divide"})
#: the one value that may call ``uaseg.dataset_plan`` (which writes a fingerprint into ``dataset.cache_dir``),
#: at the key ``dataset.plan`` only: ``conf/dataset/nnunet.yaml``'s (a test keeps them equal)
PLAN = ("${uaseg.dataset_plan:${dataset._target_},${dataset.root},${dataset.cache_dir},${dataset.spacing},"
        "${dataset.orientation},${dataset.max_patch_size_2d},${dataset.max_patch_size_3d},"
        "${oc.select:model.net.strides,null}}")
#: the environment variables ``oc.env`` may read (``conf/paths``)
ENV_NAMES = frozenset({"PROJECT_ROOT", "UASEG_CACHE"})


def _where(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def unresolved(tree: Any) -> Any:
    """``tree`` as plain containers if it is an OmegaConf config, interpolations left as text
    (reading a config's values resolves them)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(tree, resolve=False) if OmegaConf.is_config(tree) else tree


def interpolated(tree: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """``(key path, text)`` of every string in the nested dicts/lists ``tree`` (keys included)
    that holds ``${``; tensors and numbers are skipped. Nothing is resolved."""
    tree = unresolved(tree)
    if isinstance(tree, str):
        if "${" in tree:
            yield path, tree
    elif isinstance(tree, Mapping):
        for key, value in tree.items():
            where = _where(path, key)
            if isinstance(key, str) and "${" in key:
                yield where, key
            yield from interpolated(value, where)
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from interpolated(value, f"{path}[{i}]")


def refuse_interpolations(tree: Any, source: str | Path, trust: bool = False, error: type[UserError] = CheckpointError,
                          what: str = "a checkpoint", hint: str = "if you trust this file, pass trust_checkpoint=true",
                          path: str = "") -> None:
    """An ``error`` naming ``source`` and the key of the first string of ``tree`` holding ``${``
    (``what`` the file is: it holds plain values only); with ``trust`` a warning instead."""
    import logging

    for key, text in interpolated(tree, path):
        if not trust:
            raise error(f"{source}: {key}={text!r} is an OmegaConf interpolation, which uaseg would resolve when it "
                        f"builds from it (and which can build and run any code); {what} holds plain values only, so "
                        f"this one was edited or crafted; refused" + (f" ({hint})" if hint else ""))
        logging.getLogger("uaseg.runs.trust").warning("%s: %s=%r is an interpolation; resolved anyway because "
                                                 "trust_checkpoint=true", source, key, text)


def check_resolvers(tree: Any, source: str | Path, trust: bool = False, path: str = "") -> None:
    """A :class:`CheckpointError` naming ``source`` and the key of the first interpolation of the
    unresolved config ``tree`` that calls a resolver outside :data:`RESOLVERS` (or one whose name is
    itself an interpolation, or that does not parse); with ``trust`` a warning. Nothing is resolved."""
    import logging

    for key, text in interpolated(tree, path):
        problem = resolver_problem(key, text)
        if problem and trust:
            logging.getLogger("uaseg.runs.trust").warning("%s: %s=%r %s; resolved anyway because trust_checkpoint=true",
                                                     source, key, text, problem)
        elif problem:
            raise CheckpointError(f"{source}: {key}={text!r} {problem}; nothing was resolved. A run folder's config "
                                  f"may use only the resolvers of uaseg's conf/ ({', '.join(sorted(RESOLVERS))})")


def resolver_problem(key: str, text: str) -> str | None:
    """Why the value ``text`` at ``key`` may not be resolved, or None."""
    from antlr4 import ParserRuleContext
    from omegaconf import grammar_parser
    from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser as G

    if "uaseg.dataset_plan" in text:
        return None if (key == "dataset.plan" and text == PLAN) else (
            "calls uaseg.dataset_plan other than as conf/dataset/nnunet.yaml's dataset.plan")
    try:
        tree = grammar_parser.parse(text)
    except Exception as e:  # GrammarParseError: OmegaConf itself would refuse it
        return f"is not a valid interpolation ({' '.join(str(e).split())[:120]})"
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, G.InterpolationResolverContext):
            name_ctx = node.resolverName()
            if any(isinstance(c, ParserRuleContext) for c in name_ctx.getChildren()):
                return f"names its resolver by an interpolation ({name_ctx.getText()!r})"
            name = name_ctx.getText()
            if name == "oc.env":
                args = node.sequence().element() if node.sequence() else []
                if not args or args[0].getText() not in ENV_NAMES:
                    return f"reads an environment variable other than {' or '.join(sorted(ENV_NAMES))}"
            elif name not in RESOLVERS:
                return f"calls the resolver {name!r}, which uaseg's configs do not use"
        if isinstance(node, ParserRuleContext):
            todo.extend(c for c in node.getChildren() if isinstance(c, ParserRuleContext))
    return None
