"""Stage 4 and the grouping half of stage 6: assign nodes to providers, then group them.

Providers are asked in the user's priority order, each over the nodes still unassigned; a claim never
steals. Same-provider nodes are then grouped into maximal cycle-free partitions by Kahn waves: nodes
are taken in a topological order that keeps taking ready nodes of the current partition's provider
for as long as there are any, so every partition is a contiguous run of one topological order and
no path can leave a partition and re-enter it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from engineroom.plugin_sdk import CompilingProvider, ExecutionProvider, GraphView, NodeView
from engineroom.plugin_sdk.grouping import cycle_free_runs


@dataclass(frozen=True)
class AssignedNode:
    """One node of a partition, as onnxruntime's ``OrtEpAssignedNode`` names it."""

    name: str
    domain: str
    op_type: str


@dataclass
class Partition:
    """A maximal cycle-free run of nodes on one provider (onnxruntime's ``OrtEpAssignedSubgraph``)."""

    ep_name: str
    provider_index: int
    nodes: list[NodeView]
    compiled: bool = False
    note: str = ""
    _assigned: list[AssignedNode] = field(default_factory=list, repr=False)

    def __repr__(self) -> str:
        kind = "compiled group" if self.compiled else "kernels"
        return f"<Partition {self.ep_name}: {len(self.nodes)} nodes ({kind})>"

    def get_nodes(self) -> list[AssignedNode]:
        if not self._assigned:
            self._assigned = [AssignedNode(n.name, n.domain, n.op_type) for n in self.nodes]
        return list(self._assigned)


def assign(views: list[NodeView], providers: list[ExecutionProvider], graph: GraphView) -> tuple[list, dict, list]:
    """Ask each provider in turn. Returns (owner provider index per node or None,
    compiled-group id per node index, notes from the providers)."""
    owner: list[int | None] = [None] * len(views)
    group_of: dict[int, int] = {}
    notes: list[str] = []
    next_group = 0
    for pi, p in enumerate(providers):
        free = [v for v in views if owner[v.index] is None]
        if not free:
            break
        graph.nodes = free
        graph.all_nodes = views
        graph.notes = []
        for cap in p.get_capability(graph) or ():
            idxs = [v.index for v in cap.nodes if owner[v.index] is None]
            for i in idxs:
                owner[i] = pi
            if cap.kind == "group" and isinstance(p, CompilingProvider):
                for i in idxs:
                    group_of[i] = next_group
                next_group += 1
            if cap.note:
                notes.append(f"{p.name}: {cap.note}")
        notes += [f"{p.name}: {t}" for t in graph.notes]
    return owner, group_of, notes


def group(views: list[NodeView], owner: list[int], group_of: dict[int, int],
          providers: list[ExecutionProvider], outer: dict[int, list[str]]) -> list[Partition]:
    """Maximal cycle-free partitions in a topological order (Kahn waves, ``plugin_sdk.grouping``). ``outer``
    lists, per node with subgraphs, the enclosing-scope values those subgraphs read (edges like its inputs)."""
    runs = cycle_free_runs(views, lambda i: (owner[i], group_of.get(i, -1)),
                           lambda v: (*v.input_names, *outer.get(v.index, ())))
    return [Partition(providers[pi].name, pi, [views[i] for i in run], compiled=gid >= 0) for (pi, gid), run in runs]

