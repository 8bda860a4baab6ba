"""Hostile input, one case per row of docs/faq.md's "Bad input" table: each gets one clear
message naming the item and the fix, before training where it can be known there.

`CASES` holds (id, when, call, error type, a fragment of the message); `when` is the
faq's column: "construction", "check" (MemWatch.check / the first step, before
training), "load", "cli" (a one-line error, exit code 2) or "probe" (at the first probe
that shows it, as a warning). `test_the_table_is_counted` keeps the counts the docs
quote honest.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from memwatch.demos.model import tiny_model
from memwatch.monitor import MemWatch, ProbeError
from memwatch.policy import AbortPolicy
from memwatch.sinks.base import Sink
from memwatch.watchlist import Watchlist

M = N = 4
ROWS = torch.arange(3 * (M + N)).reshape(3, M + N) * 20
TAGS = [("pii:EMAIL_ADDRESS",), ("canary",), ("sample",)]


def wl(**kw) -> Watchlist:
    return Watchlist(ROWS, ["row-0", "row-1", "row-2"], TAGS, **kw)


def mon(**kw) -> MemWatch:
    return MemWatch(wl(), **{"prompt_len": M, "cont_len": N, **kw})


def model(**config):
    return tiny_model(seed=0, hidden_size=16, num_layers=1, num_heads=2, **config)


def saved(tmp_path, edit=None, tokens=None):
    """A saved watchlist, its watchlist.json passed through `edit`, its tokens replaced."""
    path = wl().save(tmp_path / "wl")
    if edit is not None:
        meta = json.loads((path_ := tmp_path / "wl" / "watchlist.json").read_text())
        text = edit(meta)
        path_.write_text(text if isinstance(text, str) else json.dumps(meta))
    if tokens is not None:
        from safetensors.torch import save_file

        save_file({"tokens": tokens}, str(tmp_path / "wl" / "tokens.safetensors"))
    return Watchlist.load(path)


def cli(*argv):
    from memwatch.cli import main

    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    if code != 2:
        raise AssertionError(f"exit code {code}")
    raise CliError


class CliError(Exception):
    """The CLI exited with code 2; the message is on stderr."""


class FakeTokenizer:
    def __init__(self, vocab, name="tok"):
        self.vocab, self.name_or_path = vocab, name

    def get_vocab(self):
        return dict(self.vocab)


TOK_A = FakeTokenizer({"a": 0, "b": 1})
TOK_B = FakeTokenizer({"a": 1, "b": 0}, "other")


def wrong_eos():
    m = model()
    m.config.eos_token_id = m.generation_config.eos_token_id = 50256
    return m


def meta_model():
    with torch.device("meta"):
        return model()


def no_vocab():
    class P(torch.nn.Module):
        def forward(self, x):
            return x

    return P()


def empty(path):
    path.write_text("")
    return str(path)


def nested_json(tmp_path):
    return saved(tmp_path, lambda meta: "[" * 100_000 + "]" * 100_000)


def parquet_meta(tmp_path, raw: bytes):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "res" / "x.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"index": [0]}).replace_schema_metadata({"memwatch": raw}), path)
    return str(path.parent)


def corrupt_parquet(tmp_path):
    path = tmp_path / "res" / "step1.parquet"
    path.parent.mkdir()
    path.write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
    return str(path.parent)


def rank_csv(tmp_path):
    folder = tmp_path / "memorization_pythia-70m_1000"
    folder.mkdir()
    (folder / "rank-0.csv").write_text("index,accuracy\n99999999999999999999999,1.0\n")
    return str(tmp_path)


def suite_typo(tmp_path, monkeypatch):
    (tmp_path / "suite" / "tiny-neox").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return "suite/tiny-neo"


def failing_model():
    m = model()

    def boom(*args, **kwargs):
        raise RuntimeError("the forward broke")

    m.forward = boom
    return m


def nan_model():
    m = model()
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(float("nan"))
    return m


def probe_with(m, monitor=None, steps=(1,)):
    monitor = monitor or mon(every_n_steps=1, abort=AbortPolicy(tags=()))
    for s in steps:
        monitor.step(m, s)


def drop(meta, key):
    del meta[key]


# (id, when, call(tmp_path, monkeypatch), error type, fragment)
CASES = [
    # ---- MemWatch(...) ---------------------------------------------------------------------
    ("watchlist is a tensor", "construction", lambda t, mp: MemWatch(ROWS), TypeError,
     "wrap token rows with memwatch.Watchlist.from_tokens"),
    ("every_n_steps=2.5", "construction", lambda t, mp: mon(every_n_steps=2.5), ValueError,
     "every_n_steps counts optimizer steps"),
    ("total_steps=0", "construction", lambda t, mp: mon(total_steps=0), ValueError,
     "total_steps counts optimizer steps"),
    ("prompt_len=0", "construction", lambda t, mp: mon(prompt_len=0), ValueError, "prompt_len"),
    ("cont_len=-1", "construction", lambda t, mp: mon(cont_len=-1), ValueError, "cont_len"),
    ("batch_size=0", "construction", lambda t, mp: mon(batch_size=0), ValueError, "batch_size"),
    ("mode='greedy'", "construction", lambda t, mp: mon(mode="greedy"), ValueError, "mode"),
    ("exact_every=0", "construction", lambda t, mp: mon(exact_every=0), ValueError,
     "exact_every counts probes"),
    ("abort is a dict", "construction", lambda t, mp: mon(abort={"tags": ()}), TypeError,
     "abort must be an AbortPolicy"),
    ("unknown keyword", "construction", lambda t, mp: mon(probe_every=5), TypeError,
     "probe_every"),
    ("compute not vectorised", "construction",
     lambda t, mp: mon(compute=lambda s: float(s)), TypeError, "compute must be vectorised"),
    ("learning_rate not vectorised", "construction",
     lambda t, mp: mon(learning_rate=lambda s: [1.0]), TypeError,
     "learning_rate must be vectorised"),
    ("first_seen of the wrong length", "construction", lambda t, mp: mon(first_seen=[1, 2]),
     ValueError, "first_seen gives each watchlist row's first training step: 3 values"),
    ("rows shorter than prompt_len + cont_len", "construction",
     lambda t, mp: mon(prompt_len=8, cont_len=8), ValueError,
     "has 8 tokens; prompt_len + cont_len = 16 needs at least 16"),
    ("sinks=['wandb']", "construction", lambda t, mp: mon(sinks=["wandb"]), TypeError,
     "sinks[0] is the string 'wandb', not a Sink: pass the sink object, e.g. "
     "memwatch.WandbSink"),
    ("sinks=[object()]", "construction", lambda t, mp: mon(sinks=[object()]), TypeError,
     "sinks[0] is a object with none of a Sink's methods"),
    ("sinks=ConsoleSink (the class)", "construction", lambda t, mp: mon(sinks=[Sink]),
     TypeError, "is the class Sink, not a Sink object"),
    ("sinks=one sink, not a list", "construction", lambda t, mp: mon(sinks=Sink()), TypeError,
     "sinks must be a list of Sinks"),
    ("on_probe_failure='ignore'", "construction", lambda t, mp: mon(on_probe_failure="ignore"),
     ValueError, "on_probe_failure must be one of ('warn', 'raise')"),
    ("MaskSpec window > cont_len", "construction",
     lambda t, mp: mon(mask_spec=__import__("memwatch").MaskSpec(window=8)), ValueError,
     "longer than the continuation"),
    # ---- AbortPolicy(...) and its keys against the watchlist ------------------------------
    ("tags=None", "construction", lambda t, mp: AbortPolicy(tags=None), TypeError,
     "AbortPolicy tags must be a tag pattern or a sequence of them"),
    ("tags=[1]", "construction", lambda t, mp: AbortPolicy(tags=[1]), TypeError,
     "every entry is a tag pattern"),
    ("forecast_budget=5.5", "construction", lambda t, mp: AbortPolicy(forecast_budget=5.5),
     ValueError, "forecast_budget = 5.5; give a whole row count >= 0"),
    ("forecast_budget={'*': -1}", "construction",
     lambda t, mp: AbortPolicy(forecast_budget={"*": -1}), ValueError,
     "forecast_budget['*'] = -1"),
    ("max_fraction=0.1 (not a mapping)", "construction",
     lambda t, mp: AbortPolicy(max_fraction=0.1), TypeError,
     "max_fraction must be a mapping tag pattern -> value"),
    ("max_fraction 1.5", "construction", lambda t, mp: AbortPolicy(max_fraction={"*": 1.5}),
     ValueError, "is not a fraction in [0, 1]"),
    ("patience=0", "construction", lambda t, mp: AbortPolicy(patience=0), ValueError,
     "patience counts probes"),
    ("action='halt'", "construction", lambda t, mp: AbortPolicy(action="halt"), ValueError,
     "action must be one of"),
    ("actions value 'drop'", "construction", lambda t, mp: AbortPolicy(actions={"*": "drop"}),
     ValueError, "give one of ('alert', 'mask', 'abort')"),
    ("mask_risk without a mask action", "construction",
     lambda t, mp: AbortPolicy(mask_risk=0.5), ValueError, "no pattern has it"),
    ("tags=('PII:*',): case", "construction",
     lambda t, mp: mon(abort=AbortPolicy(tags=("PII:*",))), ValueError,
     "tags are case-sensitive: it matches ['pii:EMAIL_ADDRESS'] ignoring case"),
    ("tags naming no row", "construction",
     lambda t, mp: mon(abort=AbortPolicy(tags=("secret",))), ValueError,
     "AbortPolicy.tags pattern 'secret' names no watchlist row; the watchlist's tags are "
     "['canary', 'pii:EMAIL_ADDRESS', 'sample']"),
    ("actions={'pii:*': 'mask'} without pii rows", "construction",
     lambda t, mp: MemWatch(Watchlist(ROWS, ["a", "b", "c"], [("sample",)] * 3), prompt_len=M,
                            cont_len=N, abort=AbortPolicy(actions={"pii:*": "mask"})),
     ValueError, "AbortPolicy.actions pattern 'pii:*' names no watchlist row"),
    ("max_fraction key naming no row", "construction",
     lambda t, mp: mon(abort=AbortPolicy(max_fraction={"pii:PHONE*": 0.0})), ValueError,
     "AbortPolicy.max_fraction pattern 'pii:PHONE*' names no watchlist row"),
    ("forecast_budget key naming no row", "construction",
     lambda t, mp: mon(abort=AbortPolicy(forecast_budget={"Canary": 1})), ValueError,
     "it matches ['canary'] ignoring case"),
    # ---- Watchlist(...) ------------------------------------------------------------------
    ("float token ids", "construction", lambda t, mp: Watchlist(ROWS + 0.7, list("abc"), TAGS),
     ValueError, "is not integer token ids"),
    ("negative token ids", "construction", lambda t, mp: Watchlist(-ROWS - 1, list("abc"), TAGS),
     ValueError, "has a negative token id -1 at position 0"),
    ("uint64 ids above int64", "construction",
     lambda t, mp: Watchlist(np.full((1, 8), 2**63 + 1, np.uint64), ["a"], [()]), ValueError,
     "beyond any vocabulary"),
    ("from_tokens tags of the wrong length", "construction",
     lambda t, mp: Watchlist.from_tokens(ROWS, tags=["a", "b"]), ValueError,
     "tags has 2 entries for 3 watchlist rows"),
    ("duplicate ids", "construction", lambda t, mp: Watchlist(ROWS, list("aab"), TAGS),
     ValueError, "watchlist id 'a' is used by rows 0 and 1"),
    ("an empty watchlist", "construction",
     lambda t, mp: Watchlist(torch.zeros(0, 8, dtype=torch.long), [], []), ValueError,
     "the watchlist is empty"),
    ("1-D tokens", "construction", lambda t, mp: Watchlist(ROWS[0], ["a"], [()]), ValueError,
     "must be a 2-D integer array"),
    ("Watchlist + Watchlist of different widths", "construction",
     lambda t, mp: wl() + Watchlist(ROWS[:, :6], list("xyz"), TAGS), ValueError,
     "cannot add watchlists of 8 and 6 tokens per row"),
    ("Watchlist + Watchlist of different tokenizers", "construction",
     lambda t, mp: wl(tokenizer=__import__("memwatch.watchlist.tokenizer").watchlist
                      .tokenizer.describe(TOK_A))
     + Watchlist(ROWS, list("xyz"), TAGS,
                 tokenizer=__import__("memwatch.watchlist.tokenizer").watchlist
                 .tokenizer.describe(TOK_B)),
     ValueError, "cannot combine watchlists built with different tokenizers: 'tok'"),
    # ---- before training: MemWatch.check / the first step ---------------------------------
    ("a token id outside the vocabulary", "check",
     lambda t, mp: mon().check(model(vocab_size=256)), ValueError,
     "at position 5; the model's vocabulary has 256 ids"),
    ("a module whose vocabulary is unknown", "check", lambda t, mp: mon().check(no_vocab()),
     ValueError, "cannot tell the vocabulary size of P"),
    ("a model on the meta device", "check", lambda t, mp: mon().check(meta_model()), ValueError,
     "has its parameters on the meta device"),
    ("EOS id outside the vocabulary", "check", lambda t, mp: mon().check(wrong_eos()),
     ValueError, "EOS id 50256 (generation_config / config.eos_token_id) lies outside its "
     "vocabulary of 512 ids"),
    ("the watchlist's tokenizer is not the model's", "check",
     lambda t, mp: MemWatch(wl(tokenizer=__import__("memwatch.watchlist.tokenizer").watchlist
                               .tokenizer.describe(TOK_A)), prompt_len=M, cont_len=N)
     .check(model(), TOK_B), ValueError,
     "the watchlist was built with 'tok' (fingerprint"),
    ("forecast_budget without total_steps", "check",
     lambda t, mp: mon(abort=AbortPolicy(forecast_budget={"pii:*": 5})).check(model()),
     ValueError, "AbortPolicy.forecast_budget needs the forecast, and the forecast needs the "
     "run's length"),
    ("mask_risk without total_steps", "check",
     lambda t, mp: mon(abort=AbortPolicy(actions={"pii:*": "mask"}, mask_risk=0.5))
     .check(model()), ValueError, "AbortPolicy.mask_risk needs the forecast"),
    ("step(None, 1)", "check", lambda t, mp: mon().step(None, 1), TypeError,
     "MemWatch.step(model, ...) needs the model being trained (a torch.nn.Module); got "
     "NoneType"),
    ("step(model, '3')", "check", lambda t, mp: mon().step(model(), "3"), TypeError,
     "step is the optimizer step, an int; got '3'"),
    ("check(None)", "check", lambda t, mp: mon().check(None), TypeError,
     "MemWatch.check(model, ...) needs the model"),
    # ---- Watchlist.load ---------------------------------------------------------------------
    ("a truncated watchlist.json", "load", lambda t, mp: saved(t, lambda m: '{"ids": ['),
     ValueError, "watchlist.json is not valid JSON"),
    ("a truncated tokens.safetensors", "load",
     lambda t, mp: (wl().save(t / "wl"), (t / "wl" / "tokens.safetensors").write_bytes(b"\0"),
                    Watchlist.load(t / "wl")), ValueError, "tokens.safetensors is unreadable"),
    ("'ids': 'abcdef'", "load", lambda t, mp: saved(t, lambda m: m.update(ids="abcdef")),
     ValueError, "'ids' must be a list, got str"),
    ("'tags': null", "load", lambda t, mp: saved(t, lambda m: m.update(tags=None)), ValueError,
     "'tags' must be a list, got NoneType"),
    ("a missing key", "load", lambda t, mp: saved(t, lambda m: drop(m, "ids")), ValueError,
     "'ids' is missing"),
    ("a string span", "load", lambda t, mp: saved(t, lambda m: m.update(spans=["0:1"] * 3)),
     ValueError, "'spans' entry 0 is '0:1'"),
    ("float tokens in tokens.safetensors", "load",
     lambda t, mp: saved(t, tokens=ROWS.float()), ValueError, "'tokens' has dtype torch.float32"),
    ("a watchlist.json nested too deep", "load", lambda t, mp: nested_json(t), ValueError,
     "watchlist.json nests too deep"),
    ("watchlist.json and tokens from different saves", "load",
     lambda t, mp: saved(t, tokens=ROWS[:, :6].contiguous()), ValueError,
     "records 8 tokens per row: the two files are from different saves"),
    ("a bad recorded tokenizer", "load", lambda t, mp: saved(t, lambda m: m.update(tokenizer=3)),
     ValueError, "'tokenizer' must be null or an object with a 'fingerprint' string"),
    # ---- the command line -------------------------------------------------------------------
    ("--model path with a typo", "cli",
     lambda t, mp: cli("eval", "--model", suite_typo(t, mp), "--watchlist", "wl", "--out", "o"),
     CliError, "no folder suite/tiny-neo; suite/ holds tiny-neox"),
    ("an empty --texts file", "cli",
     lambda t, mp: cli("watchlist", "build", "--texts", empty(t / "e.txt"), "--pii",
                       "--tokenizer", str(t), "--out", str(t / "o")), CliError,
     "e.txt holds no text (an empty file)"),
    ("a --texts .jsonl line that is not JSON", "cli",
     lambda t, mp: ((t / "a.jsonl").write_text('{"text": "x"}\n{oops\n'),
                    cli("watchlist", "build", "--texts", str(t / "a.jsonl"), "--tokenizer",
                        str(t), "--out", str(t / "o"))), CliError,
     "a.jsonl:2 is not a JSON object"),
    ("a rank CSV index beyond int64", "cli",
     lambda t, mp: cli("analyze", rank_csv(t), "--target", "pythia-70m@step1000", "--out",
                       str(t / "r"), "--no-progress"), CliError,
     "rank-0.csv: a sequence index is beyond int64"),
    ("corrupt parquet (footer)", "cli",
     lambda t, mp: cli("analyze", corrupt_parquet(t), "--target", "m@step1", "--out",
                       str(t / "r"), "--no-progress"), CliError,
     "step1.parquet: unreadable parquet"),
    ("parquet metadata nested too deep", "cli",
     lambda t, mp: cli("analyze", parquet_meta(t, b"[" * 100_000 + b"]" * 100_000), "--target",
                       "m@step1", "--out", str(t / "r"), "--no-progress"), CliError,
     "x.parquet: its 'memwatch' metadata nests too deep"),
    ("parquet metadata that is not JSON", "cli",
     lambda t, mp: cli("analyze", parquet_meta(t, b"{oops"), "--target", "m@step1", "--out",
                       str(t / "r"), "--no-progress"), CliError,
     "x.parquet: its 'memwatch' metadata is not valid JSON"),
    # ---- at the first probe that shows it ---------------------------------------------------
    ("a model with NaN weights", "probe", lambda t, mp: probe_with(nan_model()), RuntimeWarning,
     "the model's logits are NaN at step 1"),
    ("a forward that raises", "probe", lambda t, mp: probe_with(failing_model()),
     RuntimeWarning, "memwatch probe at step 1 failed"),
    ("a probe that keeps failing", "probe",
     lambda t, mp: probe_with(failing_model(), steps=(1, 2, 3)), RuntimeWarning,
     "memwatch probe at step 1 failed"),
    ("a probe failure under on_probe_failure='raise'", "probe",
     lambda t, mp: probe_with(failing_model(), mon(every_n_steps=1, on_probe_failure="raise")),
     ProbeError, "memwatch probe at step 1 failed"),
    ("a step lower than the last one", "probe",
     lambda t, mp: probe_with(model(), steps=(5, 6, 1)), RuntimeWarning,
     "memwatch got step 1 after step 6"),
]

WHEN = ("construction", "check", "load", "cli", "probe")


@pytest.mark.parametrize(("name", "when", "call", "error", "fragment"), CASES,
                         ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_message(name, when, call, error, fragment, tmp_path,
                                          monkeypatch, capsys, caplog):
    if issubclass(error, Warning):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call(tmp_path, monkeypatch)
        messages = [str(w.message) for w in caught if issubclass(w.category, error)]
        assert any(fragment in m for m in messages), messages
        return
    with pytest.raises(error) as info:
        call(tmp_path, monkeypatch)
    message = capsys.readouterr().err if error is CliError else str(info.value)
    assert fragment in message
    assert "\n" not in message.strip(), "one line"
    assert "Traceback" not in message


def test_a_probe_that_keeps_failing_logs_one_error_and_alerts(recorder, caplog):
    rec = recorder()
    monitor = mon(every_n_steps=1, abort=AbortPolicy(tags=()), sinks=[rec])
    broken = failing_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step in range(1, 6):
            monitor.step(broken, step)
    loud = [a for a in rec.of("alert") if a.kind == "probe_failing"]
    assert [(a.level, a.step) for a in loud] == [("ERROR", 3)]
    assert "failed 3 times in a row" in loud[0].text and "the forward broke" in loud[0].text
    errors = [r for r in caplog.records if r.levelname == "ERROR" and r.name == "memwatch"]
    assert len(errors) == 1 and "not monitored until a probe succeeds" in errors[0].getMessage()


def test_the_table_is_counted():
    counts = {w: sum(c[1] == w for c in CASES) for w in WHEN}
    assert set(c[1] for c in CASES) <= set(WHEN)
    assert len({c[0] for c in CASES}) == len(CASES)
    before = counts["construction"] + counts["check"] + counts["load"] + counts["cli"]
    assert (before, counts["probe"]) == (71, 5), counts


def test_the_end_summary_names_what_a_failing_sink_lost(tmp_path):
    from memwatch.sinks import LocalSink

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monitor = mon(every_n_steps=1, abort=AbortPolicy(tags=()),
                  sinks=[LocalSink(blocker / "log")])  # a folder under a file: a full disk
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor.step(model(), 1)
        monitor.finish(model(), 2)
    end = [str(w.message) for w in caught if "so they lack" in str(w.message)]
    assert len(end) == 1
    assert f"LocalSink: {blocker / 'log'} lacks 2 probe events, 1 end event, no " \
           "history.parquet" in end[0]


def test_a_wandb_sink_that_fails_says_what_w_and_b_did_not_get(tmp_path):
    from memwatch.sinks import WandbSink

    sink = WandbSink(project="p", local_dir=tmp_path / "local")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sink._fail("log a probe", ConnectionError("W&B is down"))
        sink._fail("log a probe", ConnectionError("W&B is down"))
    assert sink.lost() == (f"W&B could not log a probe (2x); every record is in the local "
                           f"copy {tmp_path / 'local' / 'records.jsonl'}")
    sink.close()
