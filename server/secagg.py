"""Server side of secure aggregation: Flower's ``SecAggPlusWorkflow`` with cryptographic masks and dropout handling.

:class:`SecAggPlusRound` keeps Flower's four stages (setup, share keys, collect masked vectors,
unmask) and changes three things:

- masks come from :func:`fedpers.aggregation.secure.keystream_masks`, as on the client
  (:mod:`clients.secagg`);
- a client that drops before its key shares were handed out (setup or share keys) holds no mask
  anyone must remove, so it is left out of the unmask stage. Flower's workflow asks the survivors
  for shares they never received, and the round halts with no update and no error;
- a round that cannot finish (too few clients left for the reconstruction threshold, shares
  missing, every reply failing) is logged as an error and run again from the setup stage, up to
  ``retries`` times; then :class:`SecureAggregationError` is raised. Every stage waits at most
  ``timeout`` seconds.

Clients cache their upload per round, so a retry does not train (or spend privacy budget) again.
``observer``, when given, sees every reply the server receives: tests use it to check that no
individual update ever arrives unmasked.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from logging import ERROR, INFO, WARNING
from typing import cast

import flwr.compat.common.recorddict_compat as compat
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import ndarrays_to_parameters
from flwr.common.logger import log
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_extract,
    get_parameters_shape,
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from fedpers.aggregation.secure import QuantizationPlan, centered_sum, keystream_masks

STAGES = ("setup", "share keys", "collect masked vectors", "unmask")
REPLY_POLL_SECONDS = 0.2
"""How often a stage asks for its replies. Flower's deployment grid asks every 3 s, and a SecAgg+ round
waits on four stages one after another."""


class SecureAggregationError(RuntimeError):
    """A secure-aggregation round failed on every attempt."""


class ObservedGrid:
    """A grid that asks for replies every ``poll`` seconds (at most), times the waits for them and shows
    every reply to ``observer(stage, message)``."""

    def __init__(
        self,
        grid,
        observer: Callable | None,
        stage: Callable[[], str],
        poll: float = REPLY_POLL_SECONDS,
    ) -> None:
        self._grid, self._observer, self._stage = grid, observer, stage
        self.poll = min(poll, getattr(grid, "pull_interval", poll))
        self.waited = 0.0

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def _send_and_receive(self, messages, timeout: float | None) -> list[Message]:
        """Flower's ``Grid.send_and_receive`` (push, then pull until every reply is in or ``timeout``
        seconds have passed), asking every :attr:`poll` seconds."""
        pending = set(self._grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            received = list(self._grid.pull_messages(pending))
            replies += received
            pending -= {m.metadata.reply_to_message_id for m in received}
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.poll)
        return replies

    def send_and_receive(self, messages, *, timeout=None):
        started = time.perf_counter()
        replies = self._send_and_receive(messages, timeout)
        self.waited += time.perf_counter() - started
        if self._observer is not None:
            for reply in replies:
                self._observer(self._stage(), reply)
        return replies


def _reason(failure: BaseException) -> str:
    """The reason a client gave in an error reply (Flower wraps its ``Error`` in an exception)."""
    error = failure.args[0] if failure.args else failure
    return str(getattr(error, "reason", error))


class SecAggPlusRound(SecAggPlusWorkflow):
    """One SecAgg+ aggregation per call (see the module docstring); ``history`` records each attempt,
    with its wall time and ``server_seconds``, the part not spent waiting for clients."""

    def __init__(
        self,
        plan: QuantizationPlan,
        *,
        num_shares: int | float = 1.0,
        reconstruction_threshold: int | float = 0.5,
        timeout: float = 600.0,
        retries: int = 2,
        observer: Callable | None = None,
        label: str = "training",
    ) -> None:
        super().__init__(
            num_shares,
            reconstruction_threshold,
            max_weight=plan.max_weight,
            clipping_range=plan.clipping_range,
            quantization_range=plan.quantization_range,
            modulus_range=plan.modulus_range,
            timeout=timeout,
        )
        self.plan = plan
        self.retries = retries
        self.observer = observer
        self.label = label
        self.history: list[dict] = []
        self._stage = STAGES[0]
        self.unmasked_weight: int | None = None

    def __call__(self, grid: Grid, context: LegacyContext) -> None:
        if not isinstance(context, LegacyContext):
            raise TypeError(f"Expect a LegacyContext, but get {type(context).__name__}.")
        grid = ObservedGrid(grid, self.observer, lambda: self._stage)
        server_round = int(
            context.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND]
        )
        steps = (
            self.setup_stage,
            self.share_keys_stage,
            self.collect_masked_vectors_stage,
            self.unmask_stage,
        )
        for attempt in range(1, self.retries + 2):
            state = WorkflowState()
            started, waited = time.perf_counter(), grid.waited
            record = {
                "round": server_round,
                "session": self.label,
                "attempt": attempt,
                "dropped": {},
            }
            failed_at = None
            for name, step in zip(STAGES, steps):
                self._stage = name
                before, errors = set(state.active_node_ids), len(state.failures)
                ok = step(grid, context, state)
                lost = (before or state.sampled_node_ids) - state.active_node_ids
                if lost:
                    record["dropped"][name] = len(lost)
                    reasons = "; ".join(_reason(f) for f in state.failures[errors:])
                    log(
                        WARNING,
                        "round %d %s: %d client(s) dropped during %s; continuing with %d%s",
                        server_round,
                        self.label,
                        len(lost),
                        name,
                        len(state.active_node_ids),
                        f" (client errors: {reasons})" if reasons else "",
                    )
                if not ok:
                    failed_at = name
                    break
            seconds = time.perf_counter() - started
            record |= {
                "completed": failed_at is None,
                "failed_stage": failed_at,
                "seconds": seconds,
                "server_seconds": seconds - (grid.waited - waited),
                "sampled": len(state.sampled_node_ids),
                "aggregated": len(state.legacy_results),
            }
            self.history.append(record)
            if failed_at is None:
                return
            log(
                ERROR,
                "round %d %s: secure aggregation failed at the %s stage (attempt %d of %d)%s",
                server_round,
                self.label,
                failed_at,
                attempt,
                self.retries + 1,
                "; retrying from setup" if attempt <= self.retries else "",
            )
        raise SecureAggregationError(
            f"round {server_round} {self.label}: secure aggregation failed on all {self.retries + 1} attempts "
            f"(last at the {self.history[-1]['failed_stage']} stage); no update was applied"
        )

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        ok = super().share_keys_stage(grid, context, state)
        # Only clients whose key shares went out can have masks in anyone's vector.
        holders = set(state.active_node_ids)
        state.sampled_node_ids = holders
        state.nid_to_neighbours = {
            nid: nbrs & holders for nid, nbrs in state.nid_to_neighbours.items() if nid in holders
        }
        return ok and bool(holders) and self._check_threshold(state)

    def collect_masked_vectors_stage(
        self, grid: Grid, context: LegacyContext, state: WorkflowState
    ) -> bool:
        ok = super().collect_masked_vectors_stage(grid, context, state)
        return ok and bool(state.legacy_results)

    def unmask_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        """Flower's unmask stage with keystream masks; dropouts reach the strategy only through the log."""
        cfg = context.state.config_records[MAIN_CONFIGS_RECORD]
        current_round = cast(int, cfg[WorkflowKey.CURRENT_ROUND])
        active_nids = state.active_node_ids
        dead_nids = state.sampled_node_ids - active_nids

        def make(nid: int) -> Message:
            neighbours = state.nid_to_neighbours[nid]
            record = ConfigRecord(
                {
                    Key.STAGE: Stage.UNMASK,
                    Key.ACTIVE_NODE_ID_LIST: list(neighbours & active_nids),
                    Key.DEAD_NODE_ID_LIST: list(neighbours & dead_nids),
                }
            )
            return Message(
                content=RecordDict({RECORD_KEY_CONFIGS: record}),
                dst_node_id=nid,
                message_type=MessageType.TRAIN,
                group_id=str(current_round),
            )

        msgs = grid.send_and_receive([make(nid) for nid in active_nids], timeout=self.timeout)
        state.active_node_ids = {m.metadata.src_node_id for m in msgs if not m.has_error()}

        shares: dict[int, list[bytes]] = {nid: [] for nid in state.sampled_node_ids}
        for msg in msgs:
            if msg.has_error():
                state.failures.append(Exception(msg.error))
                continue
            res = msg.content.config_records[RECORD_KEY_CONFIGS]
            for owner, share in zip(
                cast(list[int], res[Key.NODE_ID_LIST]),
                cast(list[bytes], res[Key.SHARE_LIST]),
                strict=True,
            ):
                if owner in shares:
                    shares[owner].append(share)

        masked = state.aggregate_ndarrays
        shapes = get_parameters_shape(masked)
        for nid, share_list in shares.items():
            if len(share_list) < state.threshold:
                log(
                    ERROR,
                    "round %d %s: %d of %d shares needed to remove the masks of one client",
                    current_round,
                    self.label,
                    len(share_list),
                    state.threshold,
                )
                return False
            secret = combine_shares(share_list)
            if nid in active_nids:  # the client's private mask
                masked = parameters_subtraction(
                    masked, keystream_masks(secret, state.mod_range, shapes)
                )
            else:  # a client that dropped after sharing keys: remove its pairwise masks
                for other in state.nid_to_neighbours[nid] - {nid}:
                    key = generate_shared_key(
                        bytes_to_private_key(secret),
                        bytes_to_public_key(state.nid_to_publickeys[other][0]),
                    )
                    pairwise = keystream_masks(key, state.mod_range, shapes)
                    masked = (
                        parameters_addition(masked, pairwise)
                        if nid > other
                        else parameters_subtraction(masked, pairwise)
                    )
        total = parameters_mod(masked, state.mod_range)
        q_total, total = factor_extract(total)
        # the unmasked sum of the weighting factors: ``n * quantization_range`` for n honest uploads of weight
        # one; a device that changed its masked vector changed this too (the router round checks it)
        self.unmasked_weight = int(q_total)
        # devices' noise (user-level DP) may take a sum outside [0, n * range]: the centred representative
        contributions = round(int(q_total) / state.quantization_range)
        total = [centered_sum(t, contributions, self.plan) for t in total]
        aggregated = dequantize(total, state.clipping_range, state.quantization_range)
        offset = -(len(active_nids) - 1) * state.clipping_range
        for vec in aggregated:
            vec += offset
            vec *= state.quantization_range / q_total

        results = state.legacy_results
        parameters = ndarrays_to_parameters(aggregated)
        for _, fitres in results:
            fitres.parameters = parameters
        log(
            INFO,
            "round %d %s: securely aggregated %d clients",
            current_round,
            self.label,
            len(results),
        )
        parameters_aggregated, metrics = context.strategy.aggregate_fit(current_round, results, [])
        if parameters_aggregated:
            context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
                parameters_aggregated, True
            )
            context.history.add_metrics_distributed_fit(server_round=current_round, metrics=metrics)
        return True
