"""What a partial weight import loaded, kept at its initialisation and ignored, by module group.

A model has hundreds of tensors; the report names groups instead: the coarsest module
paths whose tensors all share one fate (``front (26 tensors)`` when the whole front was
loaded, ``front/layer4 (50 tensors)`` when only part of it was).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

Group = tuple[str, int]  # (module path, number of tensors)

LOADED, KEPT, IGNORED = "loaded", "kept at init", "ignored"


def group_by_status(statuses: Mapping[tuple[str, ...], str], sep: str = "/") -> dict[str, list[Group]]:
    """``{status: [(group, count), ...]}`` from ``{module path + leaf name: status}``.

    A group is the shortest path prefix (at least one component) whose leaves all have
    one status; leaves of one module with different statuses are listed one by one.
    """
    out: dict[str, list[Group]] = {}

    def visit(prefix: tuple[str, ...], leaves: list[tuple[tuple[str, ...], str]]) -> None:
        kinds = {status for _, status in leaves}
        deepest = all(len(path) <= len(prefix) + 1 for path, _ in leaves)
        if prefix and (len(kinds) == 1 or deepest):
            if len(kinds) == 1:
                out.setdefault(kinds.pop(), []).append((sep.join(prefix), len(leaves)))
                return
            for path, status in leaves:  # one module, mixed: name each leaf
                out.setdefault(status, []).append((sep.join(path), 1))
            return
        children: dict[str, list[tuple[tuple[str, ...], str]]] = {}
        for path, status in leaves:
            children.setdefault(path[len(prefix)], []).append((path, status))
        for name in sorted(children):
            visit(prefix + (name,), children[name])

    visit((), sorted(statuses.items()))
    return out


def _count(groups: Iterable[Group]) -> int:
    return sum(n for _, n in groups)


def _tensors(n: int) -> str:
    return f"{n} tensor{'s' if n != 1 else ''}"


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """The outcome of loading weights into ``model`` from ``source``; ``format()`` for the console.

    ``loaded`` and ``kept`` name groups of the model (Flax paths), ``ignored`` groups of the
    source (official names or Flax paths). ``passthrough`` holds official tensors the model
    has no variable for but the official module registers (the CUB WRN-50-2's unused
    ``tmp_layer``), so an export can write them back unchanged. ``info`` is the source's
    bookkeeping (an official file's ``epoch``, ``iter``, ``best_acc``...; a checkpoint's ``step``).
    """

    model: str
    source: str = ""
    loaded: tuple[Group, ...] = ()
    kept: tuple[Group, ...] = ()
    ignored: tuple[Group, ...] = ()
    notes: tuple[str, ...] = ()
    passthrough: Mapping[str, object] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    info: Mapping[str, object] = dataclasses.field(default_factory=dict, compare=False)  # the source's bookkeeping

    @property
    def num_loaded(self) -> int:
        return _count(self.loaded)

    @property
    def num_kept(self) -> int:
        return _count(self.kept)

    @property
    def num_ignored(self) -> int:
        return _count(self.ignored)

    def group_names(self, which: str) -> list[str]:
        """The group names of ``which`` ("loaded", "kept" or "ignored")."""
        return [name for name, _ in getattr(self, which)]

    def format(self) -> str:
        lines = [f"weights for {self.model}" + (f" from {self.source}" if self.source else "")]
        for label, groups in (("loaded", self.loaded), ("kept at init", self.kept), ("ignored", self.ignored)):
            listed = ", ".join(f"{name} ({_tensors(n)})" for name, n in groups) or "-"
            lines.append(f"  {label + ':':14s}{_tensors(_count(groups)):>12s}  {listed}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


def build_report(model: str, statuses: Mapping[tuple[str, ...], str], ignored: Mapping[tuple[str, ...], str],
                 *, source: str = "", notes: Iterable[str] = (), passthrough: Mapping[str, object] | None = None,
                 model_sep: str = "/", source_sep: str = ".") -> LoadReport:
    """A report from per-leaf statuses of the model and the ignored leaves of the source.

    ``ignored`` maps every *source* leaf path to LOADED or IGNORED, so its groups are the
    coarsest source modules that were dropped as a whole.
    """
    model_groups = group_by_status(statuses, model_sep)
    source_groups = group_by_status(ignored, source_sep) if ignored else {}
    return LoadReport(model=model, source=source, loaded=tuple(model_groups.get(LOADED, ())),
                      kept=tuple(model_groups.get(KEPT, ())), ignored=tuple(source_groups.get(IGNORED, ())),
                      notes=tuple(notes), passthrough=dict(passthrough or {}))
