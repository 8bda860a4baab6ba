"""Targeted loss masking: the window lookup (pure), policy actions, the monitor, the adapters."""

from __future__ import annotations

import pytest
import torch

from memwatch.masking import FlaggedWindows, MaskSpec, window_keys

M = N = 32
G = torch.Generator().manual_seed(0)
ROWS = torch.randint(1, 500, (4, M + N), generator=G)  # flagged watchlist rows
CONT = ROWS[:, M:]


def brute_positions(ids: torch.Tensor, conts: torch.Tensor, window: int, every: int = 1):
    """The documented rule, position by position: a window of a continuation inside one
    sequence masks the positions it covers whose continuation offset is a multiple of `every`."""
    out = torch.zeros(ids.shape, dtype=torch.bool)
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1] - window + 1):
            for cont in conts:
                for o in range(cont.shape[0] - window + 1):
                    if torch.equal(ids[b, t:t + window], cont[o:o + window]):
                        for j in range(window):
                            if (o + j) % every == 0:
                                out[b, t + j] = True
    return out


def batch_with(*placements, length: int = 96, seed: int = 1) -> torch.Tensor:
    """Random text (ids 500-999, disjoint from the rows) with token runs placed at (b, t, run)."""
    ids = torch.randint(500, 1000, (2, length), generator=torch.Generator().manual_seed(seed))
    for b, t, run in placements:
        ids[b, t:t + len(run)] = run
    return ids


def test_window_keys_are_the_polynomial_hash():
    from memwatch.masking import BASE, MODULI

    ids = torch.randint(0, 50304, (3, 40), generator=G)
    keys = window_keys(ids, 7)
    assert keys.shape == (3, 34)
    for b, t in [(0, 0), (1, 17), (2, 33)]:
        res = [sum(int(ids[b, t + j]) * pow(BASE, j, p) for j in range(7)) % p for p in MODULI]
        assert int(keys[b, t]) == res[0] * MODULI[1] + res[1]
    assert window_keys(ids, 41).shape == (3, 0)


def test_a_whole_row_masks_its_continuation_and_not_its_prompt():
    ids = batch_with((0, 10, ROWS[1]))
    mask = FlaggedWindows(CONT, MaskSpec(window=16)).positions(ids)
    expected = torch.zeros_like(mask)
    expected[0, 10 + M:10 + M + N] = True
    assert torch.equal(mask, expected)


def test_a_row_split_across_two_sequences_is_masked_in_each_piece_of_at_least_window_tokens():
    # sequence 0 ends with the prompt and the first 20 continuation tokens; sequence 1 starts
    # with the other 12: both pieces hold >= 8 tokens (window 8), only the first >= 16.
    ids = batch_with((0, 96 - M - 20, ROWS[2, :M + 20]), (1, 0, CONT[2, 20:]))
    masks = {w: FlaggedWindows(CONT, MaskSpec(window=w)).positions(ids) for w in (8, 16)}
    expected = torch.zeros_like(ids, dtype=torch.bool)
    expected[0, 76:96] = True
    expected[1, 0:12] = True
    assert torch.equal(masks[8], expected)
    expected[1, 0:12] = False
    assert torch.equal(masks[16], expected)
    assert torch.equal(masks[8], brute_positions(ids, CONT, 8))


def test_every_kth_masks_the_same_continuation_offsets_at_every_occurrence():
    ids = batch_with((0, 5, ROWS[0]), (1, 96 - 20, CONT[3, :20]), (1, 0, CONT[3, 20:]))
    mask = FlaggedWindows(CONT, MaskSpec(window=8, every=4)).positions(ids)
    expected = torch.zeros_like(mask)
    expected[0, 5 + M:5 + M + N:4] = True  # offsets 0, 4, ..., 28 of row 0's continuation
    expected[1, 76:96:4] = True  # offsets 0, 4, ..., 16 of row 3's
    expected[1, 0:12:4] = True  # offsets 20, 24, 28
    assert torch.equal(mask, expected)
    assert torch.equal(mask, brute_positions(ids, CONT, 8, every=4))


def test_random_batches_match_the_rule_exactly():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 40, (3, 120), generator=g)  # a small vocabulary: many partial matches
    conts = torch.randint(1, 40, (6, 12), generator=g)
    # (sequence, position, row, first, end): whole rows, pieces, a row cut across sequences
    for b, t, r, a, z in [(0, 3, 0, 0, 12), (1, 50, 2, 3, 11), (2, 110, 4, 0, 10),
                          (2, 0, 4, 10, 12)]:
        ids[b, t:t + z - a] = conts[r, a:z]
    for window, every in [(4, 1), (6, 3), (12, 1)]:
        got = FlaggedWindows(conts, MaskSpec(window=window, every=every)).positions(ids)
        assert torch.equal(got, brute_positions(ids, conts, window, every)), (window, every)


EOS = 0  # the end-of-document token of the short-record rows below


def test_a_short_record_is_found_by_its_tail_and_end_of_document_token():
    # a short record's row: 6 tokens from its PII to its end, then EOS, padded with EOS
    tail = torch.tensor([21, 22, 23, 24, 25, 26])
    short = torch.cat([tail, torch.full((N - len(tail),), EOS)])
    conts = torch.stack([short, CONT[0]])
    stream = torch.cat([torch.tensor([EOS, 30, 31]), tail, torch.tensor([EOS])])  # [EOS] record
    ids = batch_with((0, 20, stream), (1, 5, tail), (1, 30, ROWS[0]))  # the tail without EOS
    for every in (1, 2):
        got = FlaggedWindows(conts, MaskSpec(window=16, every=every)).positions(ids)
        expected = torch.zeros_like(got)
        for j in range(0, len(tail) + 1, every):  # the tail and its EOS, not the record's start
            expected[0, 23 + j] = True
        for j in range(0, N, every):
            expected[1, 30 + M + j] = True
        assert torch.equal(got, expected), every


def test_short_tails_only_for_rows_padded_past_the_window():
    from memwatch.masking import short_tails

    rows = torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8],
                         [9, 9, 9, 9, 9, 9, 9, 9], [1, 2, 3, 4, 5, 0, 0, 0],
                         [1, 2, 3, 4, 5, 6, 7, 7]])
    assert short_tails(rows, 6).tolist() == [4, 0, 0, 0, 0]
    assert short_tails(rows, 8).tolist() == [4, 0, 0, 6, 7]


def test_a_scanned_short_record_is_masked_where_the_stream_holds_it(tiny_tokenizer):
    from memwatch.watchlist import Watchlist
    from memwatch.watchlist.text import encode

    record = '{"ssn": "536-22-8014"}'
    wl = Watchlist.scan_pii([record], tiny_tokenizer, backend="regex")
    cont = wl.tokens[:, M:M + N]
    ids, offsets = encode(tiny_tokenizer, record)
    first = next(k for k, (_, e) in enumerate(offsets) if e > record.index("536"))
    assert len(ids) - first + 1 < 16  # the PII to the record's end, EOS included: < window
    eos = tiny_tokenizer.eos_token_id
    stream = torch.tensor([[7] * 5 + [eos] + ids + [eos] + [7] * 5])
    got = FlaggedWindows(cont).positions(stream)
    expected = torch.zeros_like(got)
    expected[0, 6 + first:6 + len(ids) + 1] = True
    assert torch.equal(got, expected)


def test_a_hash_collision_masks_nothing():
    # Moduli 5 and 7: 35 possible keys, so most unrelated windows share a key with a flagged one.
    ids = batch_with((0, 10, ROWS[1]))
    small = FlaggedWindows(CONT, MaskSpec(window=8), moduli=(5, 7))
    flagged_keys = set(window_keys(CONT, 8, (5, 7)).flatten().tolist())
    batch_keys = window_keys(ids, 8, (5, 7))
    genuine = {(0, t) for t in range(10 + M, 10 + M + N - 8 + 1)}
    impostors = [(b, t) for b in range(2) for t in range(batch_keys.shape[1])
                 if int(batch_keys[b, t]) in flagged_keys and (b, t) not in genuine]
    assert len(impostors) > 20
    exact = FlaggedWindows(CONT, MaskSpec(window=8))
    assert torch.equal(small.positions(ids), exact.positions(ids))
    assert small.multiplicity > 1  # distinct flagged windows share keys: each is tried


def test_apply_sets_the_ignore_index_and_never_writes_into_its_inputs():
    ids = batch_with((1, 0, ROWS[0]))
    labels = ids.clone()
    labels[0, :3] = -100  # padding the caller already ignores
    before = labels.clone()
    fw = FlaggedWindows(CONT)
    out = fw.apply(ids, labels)
    assert torch.equal(labels, before)
    expected = before.clone()
    expected[1, M:M + N] = -100
    assert torch.equal(out, expected)
    copied = ids.clone()
    copied[1, M:M + N] = -100
    assert torch.equal(fw.apply(ids), copied)
    assert FlaggedWindows(CONT[:0]).apply(ids, labels) is labels
    assert int(FlaggedWindows(CONT, MaskSpec(ignore_index=-1)).apply(ids)[1, M]) == -1
    with pytest.raises(ValueError, match="aligned with the input ids"):
        fw.apply(ids, labels[:, 1:])


def test_bad_specs_fail_with_the_fix():
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        MaskSpec(window=0)
    with pytest.raises(ValueError, match="every must be an int >= 1"):
        MaskSpec(every=1.5)
    with pytest.raises(ValueError, match="use window <= 32"):
        FlaggedWindows(CONT, MaskSpec(window=33))


# ---- the policy's per-tag actions (pure, on a History) ----------------------------------------
P_IDS = ["c0", "c1", "p0", "p1", "s0", "s1"]
P_TAGS = [("canary",), ("canary",), ("pii:EMAIL_ADDRESS",), ("pii:PHONE_NUMBER",),
          ("sample",), ("sample",)]


def add_probe(h, rows: dict[str, int]):
    """Append a probe at the next step (10, 20, ...): {row id: match_prefix of 8}, others 0."""
    from memwatch.probe import ProbeResult

    prefix = torch.tensor([rows.get(i, 0) for i in P_IDS], dtype=torch.int16)
    h.update(10 * (len(h) + 1), ProbeResult(prefix.float() / 8, prefix == 8, prefix,
                                             mode="extractable"), "extractable")
    return h


def policy_run(policy, *probes, forecasts=None):
    """Evaluate after each probe, carrying sent keys and streak, as the monitor does."""
    from memwatch.history import History
    from memwatch.policy import evaluate

    h, out, sent, streak = History(P_IDS, P_TAGS, cont_len=8), [], frozenset(), 0
    for rows in probes:
        add_probe(h, rows)
        fc = None if forecasts is None else forecasts(h)
        v = evaluate(policy, h, sent, streak, fc, preview=lambda i: f"<redacted {P_IDS[i]}>")
        sent, streak = v.sent, v.streak
        out.append(v)
    return out


def test_actions_per_tag_alert_mask_abort_each_once():
    from memwatch.policy import AbortPolicy

    policy = AbortPolicy(actions={"pii:*": "mask", "canary": "alert", "sample": "abort"})
    v = policy_run(policy, {"c0": 8}, {"c0": 8, "p0": 8}, {"p0": 8, "p1": 8}, {"p1": 8, "s1": 8})
    assert [x.flagged for x in v] == [(), (2,), (3,), ()]
    assert [[(a.kind, a.row_ids) for a in x.alerts] for x in v] == [
        [("memorized", ("c0",))], [("mask", ("p0",))], [("mask", ("p1",))],
        [("memorized", ("s1",)), ("abort", ())]]
    assert [x.abort for x in v] == [False, False, False, True]
    assert "sample" in v[3].reason and "s1" in v[3].reason
    mask_alert = v[1].alerts[0]
    assert "<redacted p0>" in mask_alert.text and "memorized" in mask_alert.text
    # the strongest action wins where patterns overlap; `tags` patterns abort unless renamed
    both = AbortPolicy(tags=("canary",), actions={"*": "mask"})
    w = policy_run(both, {"c1": 8, "s0": 8})[0]
    assert w.flagged == (4,) and w.abort


def test_mask_at_risk_flags_rows_before_they_are_memorized():
    from memwatch.forecast import forecast
    from memwatch.policy import AbortPolicy

    policy = AbortPolicy(tags=(), actions={"pii:*": "mask"}, mask_risk=0.6)
    probes = ({"p0": 2, "p1": 1}, {"p0": 6, "p1": 2, "c0": 7})

    def fc(h):
        return forecast(h, 100, n_boot=0) if len(h) > 1 else None

    v = policy_run(policy, *probes, forecasts=fc)
    from memwatch.history import History

    h = History(P_IDS, P_TAGS, cont_len=8)
    risk = fc(add_probe(add_probe(h, probes[0]), probes[1])).risk
    assert risk.score[2] >= 0.6 > risk.score[3]  # p0 rises fast, p1 does not
    assert [x.flagged for x in v] == [(), (2,)]  # c0 is at risk too, but its action is not mask
    assert "at risk (p=" in v[1].alerts[0].text
    assert policy_run(AbortPolicy(tags=(), actions={"pii:*": "mask"}), *probes,
                      forecasts=fc)[1].flagged == ()


def test_bad_actions_fail_with_the_fix():
    from memwatch.policy import AbortPolicy

    with pytest.raises(ValueError, match=r"actions\['pii:\*'\] = 'drop'; give one of"):
        AbortPolicy(actions={"pii:*": "drop"})
    with pytest.raises(ValueError, match="add e.g. actions="):
        AbortPolicy(mask_risk=0.5)
    with pytest.raises(ValueError, match="not a probability"):
        AbortPolicy(actions={"pii:*": "mask"}, mask_risk=1.5)


# ---- the monitor in a plain loop --------------------------------------------------------------
LOOP_M = LOOP_N = 8  # planted.M, planted.N


def loop_corpus():
    from planted import CORPUS

    return CORPUS


def loop_monitor(**kwargs):
    from memwatch.monitor import MemWatch
    from memwatch.policy import AbortPolicy
    from memwatch.watchlist import Watchlist

    rows = loop_corpus().rows
    tags = [("canary",)] * 4 + [("sample",)] * 12
    wl = Watchlist(rows, [f"row-{i}" for i in range(len(rows))], tags)
    policy = AbortPolicy(tags=(), actions={"canary": "mask"})
    return MemWatch(wl, **{"prompt_len": LOOP_M, "cont_len": LOOP_N, "abort": policy,
                           "every_n_steps": 1, **kwargs})


def expected_labels(ids: torch.Tensor, flagged: set[int]) -> torch.Tensor:
    """Whole watchlist rows as sequences: a flagged row's continuation positions are -100."""
    rows = loop_corpus().rows
    out = ids.clone()
    for b in range(len(ids)):
        for r in flagged:
            if torch.equal(ids[b], rows[r]):
                out[b, LOOP_M:] = -100
    return out


@pytest.fixture(scope="module")
def masked_run(one_thread, recorder):
    """24 steps of the tiny model, labels through `mon.mask`; records what each step trained on."""
    from memwatch.demos.model import tiny_model

    mon = loop_monitor(sinks=[recorder()], every_n_steps=2)
    stream = loop_corpus().stream(seed=0)
    model = tiny_model(seed=0, hidden_size=64, num_layers=2).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    steps = []
    for step in range(1, 25):
        ids = stream[torch.arange((step - 1) * 8, step * 8) % len(stream)]
        flagged = {int(r.split("-")[1]) for r in mon.flagged}
        labels = mon.mask(ids, ids)
        steps.append((ids, flagged, labels, labels is ids))
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        mon.step(model, step)
        model.train()
    return mon, steps


def test_plain_loop_masks_exactly_the_flagged_rows_from_the_next_step_on(masked_run):
    mon, steps = masked_run
    assert mon.flagged and set(mon.flagged) <= {f"row-{i}" for i in range(4)}
    first = next(k for k, (_, flagged, _, _) in enumerate(steps) if flagged)
    assert all(same for _, _, _, same in steps[:first])  # nothing flagged: labels untouched
    masked = 0
    for ids, flagged, labels, _ in steps:
        assert torch.equal(labels, expected_labels(ids, flagged))
        masked += int((labels == -100).sum())
    assert masked >= 3 * LOOP_N
    # every flagged row was memorized at the probe that flagged it, and said so, redacted
    h = mon.history
    for row_id in mon.flagged:
        i = mon.watchlist.ids.index(row_id)
        assert h.memorized[:, i].any()


def test_monitor_state_round_trip_keeps_the_flagged_rows(masked_run, tmp_path):
    mon, steps = masked_run
    torch.save(mon.state_dict(), tmp_path / "mon.pt")
    fresh = loop_monitor()
    fresh.load_state_dict(torch.load(tmp_path / "mon.pt", weights_only=True))
    assert fresh.flagged == mon.flagged
    ids = loop_corpus().rows[:8]
    assert torch.equal(fresh.mask(ids), mon.mask(ids))
    assert torch.equal(fresh.mask(ids), expected_labels(ids, {int(r[4:]) for r in mon.flagged}))
    state = mon.state_dict()
    state["flagged"] = ["row-99"]
    with pytest.raises(ValueError, match="row-99"):
        loop_monitor().load_state_dict(state)


def test_mask_alert_names_rows_by_id_and_redacted_preview(masked_run):
    mon, _ = masked_run
    alerts = [a for a in mon.sinks[0].of("alert") if a.kind == "mask"]
    assert alerts and sum(len(a.row_ids) for a in alerts) == len(mon.flagged)
    for a in alerts:
        for row_id in a.row_ids:
            assert f"{row_id} (canary) memorized: [canary] 16 tokens" in a.text
        row = mon.watchlist.tokens[mon.watchlist.ids.index(a.row_ids[0])]
        assert " ".join(map(str, row[LOOP_M:LOOP_M + 4].tolist())) not in a.text


def test_masking_needs_a_window_within_the_continuation():
    from memwatch.masking import MaskSpec

    with pytest.raises(ValueError, match="use window <= 8"):
        loop_monitor(mask_spec=MaskSpec(window=9))


def test_skip_flagged_drops_the_flagged_rows_from_a_sampler(masked_run):
    from memwatch.masking import SkipFlagged

    mon, _ = masked_run
    rows = loop_corpus().rows
    ds = torch.utils.data.TensorDataset(rows)
    sampler = SkipFlagged(torch.utils.data.SequentialSampler(ds), mon, lambda i: f"row-{i}")
    loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler)
    got = torch.cat([b for (b,) in loader])
    kept = [i for i in range(len(rows)) if f"row-{i}" not in mon.flagged]
    assert len(kept) < len(rows) and torch.equal(got, rows[kept])


def test_skip_flagged_reads_the_flagged_set_at_every_item():
    from types import SimpleNamespace

    from memwatch.masking import SkipFlagged

    mon = SimpleNamespace(flagged=())
    out = []
    for ex in SkipFlagged([{"id": f"r{i}"} for i in range(6)] * 2, mon, lambda ex: ex["id"]):
        out.append(ex["id"])
        if len(out) == 3:
            mon.flagged = ("r1", "r4")
    assert out == ["r0", "r1", "r2", "r3", "r5", "r0", "r2", "r3", "r5"]
    loader = torch.utils.data.DataLoader(SkipFlagged(range(4), mon, str), num_workers=1)
    with pytest.raises(RuntimeError, match="wrap the sampler instead"):
        next(iter(loader))
