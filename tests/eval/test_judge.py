"""The VLM hallucination judge (coz_train/eval/judge/): what it is shown, batching, the answer cache, answer parsing
through a real HTTP server, refusals, and the `hallucination` column of a smoke evaluation and of a re-judged run."""

import copy
import csv
import json
import math
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from coz_train.eval.judge import (
    METRIC,
    JudgeCache,
    JudgePair,
    answer_settings,
    image_digest,
    judge_pairs,
    load_judge,
)
from coz_train.eval.judge.__main__ import main as judge_main
from coz_train.eval.judge.hallucination import backend_section
from coz_train.eval.judge.run_folder import judge_run, judge_section
from coz_train.eval.methods import check_eval_config
from coz_train.eval.run import evaluate
from coz_train.eval.tables import higher_is_better
from coz_train.eval_sections import JUDGE_QUESTION, JudgeConfig
from coz_train.rewards.critic import CriticScoringError, CriticUnavailableError, load_critic_backend
from coz_train.sr.chain import Chain


def picture(seed, size=48):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def pairs(n, seed=0):
    return [
        JudgePair("recursive_multiscale-vlm", 4, picture(seed + 2 * i), picture(seed + 2 * i + 1)) for i in range(n)
    ]


@pytest.fixture(scope="module")
def tiny_section(compose_cfg, tmp_path_factory):
    return compose_cfg(["+experiment=smoke_eval", "eval/judge=tiny"], tmp_path_factory.mktemp("run")).eval.judge


@pytest.fixture(scope="module")
def tiny_backend(tiny_section):
    """The tiny judge's backend, loaded once, with a counter of its model's forward passes (one per logits batch)."""
    backend = load_critic_backend(OmegaConf.create({"critic": backend_section(tiny_section)}))
    backend.forwards = 0

    def count(module, args, kwargs, output):
        backend.forwards += 1

    backend.model.register_forward_hook(count, with_kwargs=True)
    return backend


def section_with(section, **keys):
    out = copy.deepcopy(section)
    for key, value in keys.items():
        out[key] = value
    return out


def test_the_default_is_no_judge_and_the_yaml_holds_the_schema_defaults(make_config, tmp_path):
    cfg = make_config("+experiment=smoke_eval")
    assert cfg.eval.judge == OmegaConf.structured(JudgeConfig)  # conf/eval/judge/none.yaml == the dataclass
    assert cfg.eval.judge.instruction == JUDGE_QUESTION
    check_eval_config(cfg)
    assert load_judge(cfg.eval.judge, tmp_path) is None
    assert higher_is_better(METRIC) is False and higher_is_better("musiq") and not higher_is_better("niqe")


def test_the_wider_view_is_the_previous_state_of_a_chain_and_the_start_otherwise():
    states = [picture(k) for k in range(4)]
    chains = [
        Chain(label, states) for label in ("recursive_multiscale-vlm", "recursive-null", "onestep-null", "bicubic")
    ]
    got = judge_pairs(chains, [4, 16, 64])
    assert [(p.method, p.scale) for p in got[:3]] == [
        ("recursive_multiscale-vlm", 4),
        ("recursive_multiscale-vlm", 16),
        ("recursive_multiscale-vlm", 64),
    ]
    wider = [states.index(p.wider) for p in got]
    zoomed = [states.index(p.zoomed) for p in got]
    assert zoomed == [1, 2, 3] * 4
    assert wider == [0, 1, 2, 0, 1, 2, 0, 0, 0, 0, 0, 0]
    short = judge_pairs([Chain("full-vlm", states[:3])], [4, 16, 64])  # fewer steps than scales: up to its last state
    assert [p.scale for p in short] == [4, 16]


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["eval/judge=tiny", "eval.judge.backend=vllm"], r"eval\.judge\.backend='vllm'"),
        (["eval/judge=tiny", "eval.judge.scoring=vote"], r"eval\.judge\.scoring='vote'"),
        (["eval/judge=tiny", "eval.judge.batch_size=0"], r"eval\.judge\.batch_size=0"),
        (["eval/judge=tiny", "eval.judge.instruction='Is {prompt} right?'"], r"placeholder.*prompt"),
        (["eval/judge=tiny", "eval.judge.score_max=10"], r"eval\.judge\.score_max=10.*default question"),
        (["eval/judge=tiny", "eval.judge.name_or_path=/nonexistent/judge"], r"eval\.judge\.name_or_path='/nonexistent"),
        (["eval/judge=internvl3_5_38b", "eval.judge.url=null"], r"eval\.judge\.url"),
        (["eval/judge=internvl3_5_38b", "eval.judge.url=ftp://x"], r"must start with http"),
        (["eval.judge.url=http://127.0.0.1:8001"], r"eval\.judge\.name_or_path is null"),
    ],
)
def test_a_bad_judge_config_is_refused_before_any_model_loads(make_config, overrides, words):
    with pytest.raises(Exception, match=words):
        check_eval_config(make_config("+experiment=smoke_eval", *overrides))


def test_the_cache_key_is_the_pixels_and_the_settings_that_change_an_answer(tmp_path, tiny_section):
    image = picture(3)
    image.save(tmp_path / "state.png")
    with Image.open(tmp_path / "state.png") as read_back:
        assert image_digest(read_back) == image_digest(image)  # PNG: the same key in memory and on disk
    base = JudgeCache(tmp_path, answer_settings(tiny_section))
    a, b = picture(1), picture(2)
    key = base.key(a, b)
    assert base.key(b, a) != key  # which image is the wider view matters
    for change in ({"batch_size": 64}, {"url": "http://x:1"}, {"device": "cuda:3"}, {"cache_dir": "/elsewhere"}):
        assert JudgeCache(tmp_path, answer_settings(section_with(tiny_section, **change))).key(a, b) == key
    for change in (
        {"instruction": "Another question? 0 or 1."},
        {"name_or_path": "tiny:qwen2_5_vl@3"},
        {"revision": "v2"},
        {"scoring": "generate"},
        {"max_pixels": 3136},
    ):
        assert JudgeCache(tmp_path, answer_settings(section_with(tiny_section, **change))).key(a, b) != key


def test_pairs_go_in_batches_and_a_rerun_asks_the_model_nothing(tmp_path, tiny_section, tiny_backend):
    section = section_with(tiny_section, batch_size=2)
    judge = load_judge(section, tmp_path / "run", backend=tiny_backend)
    items = pairs(5)
    tiny_backend.forwards = 0
    first = judge.judge(items)
    assert tiny_backend.forwards == 3 and judge.calls == 3  # 5 pairs in batches of 2: ceil(5 / 2) model calls
    assert all(0.0 <= v <= 1.0 for v in first)  # P("1") over the answer tokens "0" and "1"
    assert len({round(v, 6) for v in first}) > 1  # the images change the answer
    assert len(list((tmp_path / "run" / "judge_cache").rglob("*.json"))) == 5
    again = load_judge(section, tmp_path / "run", backend=tiny_backend)  # a rerun: a new judge, the same cache
    tiny_backend.forwards = 0
    assert again.judge(items) == first
    assert tiny_backend.forwards == 0 and again.calls == 0 and again.cached == 5
    whole = load_judge(section_with(tiny_section, batch_size=8), tmp_path / "other", backend=tiny_backend)
    tiny_backend.forwards = 0
    assert whole.judge(items) == pytest.approx(first, abs=1e-5)  # the batch size does not change an answer
    assert tiny_backend.forwards == 1
    mixed = load_judge(section, tmp_path / "run", backend=tiny_backend)
    tiny_backend.forwards = 0
    assert mixed.judge([*items[:2], *pairs(1, seed=100)])[:2] == first[:2]  # only the new pair is asked
    assert tiny_backend.forwards == 1 and mixed.asked == 1


class Scripted(BaseHTTPRequestHandler):
    """A chat-completions server answering each request with the next scripted answer (content, or a dict of
    top logprobs for logits scoring), counting requests; the judge's client is the real `ServerCritic`."""

    def log_message(self, *args):
        pass

    def _send(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send({"status": "ok", "model": "judge-under-test"})

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append(request)
            text = request["messages"][0]["content"][-1]["text"]
            answer = self.server.answers[text][
                len([r for r in self.server.requests if r["messages"][0]["content"][-1]["text"] == text]) - 1
            ]
        if isinstance(answer, dict):  # logits scoring: the first token's top logprobs
            top = [
                {"token": token, "logprob": math.log(p), "bytes": list(token.encode())} for token, p in answer.items()
            ]
            choice = {
                "message": {"content": ""},
                "logprobs": {"content": [{"token": "0", "logprob": 0.0, "top_logprobs": top}]},
            }
        else:
            choice = {"message": {"content": answer}}
        self._send({"choices": [choice]})


@contextmanager
def judge_server(answers_by_question):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    httpd.daemon_threads = True
    httpd.answers, httpd.requests, httpd.lock = answers_by_question, [], threading.Lock()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def server_section(url, **keys):
    section = OmegaConf.merge(
        OmegaConf.structured(JudgeConfig),
        {
            "name_or_path": "judge-under-test",
            "backend": "server",
            "url": url,
            "token_env": "COZ_TEST_UNSET_TOKEN",
            "retries": 0,
            "timeout_s": 5.0,
            "concurrency": 1,
            "batch_size": 4,
        },
    )
    return section_with(section, **keys)


def test_server_answers_are_parsed_to_scores_and_unparsable_ones_abstain(tmp_path, caplog):
    question = "Hallucinated? Answer 1 or 0."
    answers = {question: ["1", "0", "Answer: 1.", "I cannot tell", "0", "0"]}
    with judge_server(answers) as (httpd, url):
        judge = load_judge(server_section(url, instruction=question), tmp_path)
        items = pairs(5)
        assert judge.judge(items) == [1.0, 0.0, 1.0, None, 0.0]
        assert len(httpd.requests) == 5 and judge.calls == 2 and judge.unparsable == 1
        assert "1 of 4 answers unparsable" in caplog.text
        sent = httpd.requests[0]
        assert sent["model"] == "judge-under-test" and sent["temperature"] == 0
        content = sent["messages"][0]["content"]
        assert [part["type"] for part in content] == ["image_url", "image_url", "text"]  # [wider, zoomed], question
        assert content[-1]["text"] == question
        again = load_judge(server_section(url, instruction=question), tmp_path)
        assert again.judge(items) == [1.0, 0.0, 1.0, None, 0.0]  # the abstention is cached too
        assert len(httpd.requests) == 5  # nothing more was asked
        # bicubic's wider view is the start: (picture 0, picture 1) is the first pair above (cached), then a new one
        scores = judge.score_chains([Chain("bicubic", [picture(0), picture(1), picture(2)])], [4, 16])
        assert scores == [("bicubic", 4, METRIC, 1.0), ("bicubic", 16, METRIC, 0.0)]
        assert len(httpd.requests) == 6


def test_logits_over_a_server_is_the_probability_of_1(tmp_path):
    question = "Hallucinated? 0 or 1."
    with judge_server({question: [{"1": 0.6, "0": 0.2, "the": 0.2}, {"yes": 0.9, "1": 0.1}]}) as (httpd, url):
        judge = load_judge(server_section(url, instruction=question, scoring="logits"), tmp_path)
        assert judge.judge(pairs(2)) == pytest.approx([0.75, 1.0])  # renormalised over the tokens "0" and "1"
        assert httpd.requests[0]["logprobs"] is True and httpd.requests[0]["max_tokens"] == 1


def test_the_critic_server_serves_the_judge_with_its_in_process_answers(
    compose_cfg, tmp_path, tiny_section, tiny_backend
):
    from coz_train.critic_server.app import CriticServer

    overrides = ["+experiment=smoke", "server.port=0", "server.token_env=COZ_TEST_UNSET_TOKEN"]
    cfg = compose_cfg([*overrides, f"critic.name_or_path={tiny_section.name_or_path}"], tmp_path / "server")
    items = pairs(3, seed=40)
    here = load_judge(section_with(tiny_section, cache_dir=str(tmp_path / "here")), tmp_path, backend=tiny_backend)
    server = CriticServer(cfg, critic=tiny_backend).start()
    try:
        # logits over a server: every token's logprob (-1, the critic server allows it), so "0" and "1" are in them
        section = server_section(server.url, name_or_path=tiny_section.name_or_path, scoring="logits", top_logprobs=-1)
        there = load_judge(section, tmp_path / "remote")
        assert there.judge(items) == pytest.approx(here.judge(items), abs=1e-4)
    finally:
        server.stop()


def test_an_all_unparsable_batch_is_an_error_and_nothing_is_cached(tmp_path):
    question = "Hallucinated? 1 or 0."
    with judge_server({question: ["yes", "no idea", "1"]}) as (httpd, url):
        judge = load_judge(server_section(url, instruction=question, batch_size=2), tmp_path)
        with pytest.raises(
            CriticScoringError, match=r"no usable answer for any of the 2 pairs.*eval\.judge\.max_new_tokens"
        ):
            judge.judge(pairs(3))
        assert not list(tmp_path.rglob("*.json"))
        assert len(httpd.requests) == 2  # the first batch failed: the second was never sent


def test_an_unreachable_server_is_an_error_naming_the_judge_keys(tmp_path):
    with judge_server({}) as (_, url):
        pass  # the port is free again: nothing listens there
    judge = load_judge(server_section(url), tmp_path)
    with pytest.raises(CriticUnavailableError, match=r"unavailable: 1 attempts failed \(eval\.judge\.retries=0"):
        judge.judge(pairs(1))


def rows(run):
    return {(r["method"], r["scale"], r["metric"]): r for r in csv.DictReader((run / "results.csv").open())}


def test_smoke_evaluation_has_the_judge_column_and_rejudging_the_folder_asks_nothing(make_config, tiny_backend):
    cfg = make_config(
        "+experiment=smoke_eval",
        "eval/judge=tiny",
        "eval.max_images=1",
        "eval.steps=2",
        "eval.methods=[bicubic,recursive_multiscale]",
        "eval.prompt_sources=[null]",
        "eval.metrics=[piqe]",
        "eval.figures=false",
    )
    run = evaluate(cfg)
    table = rows(run)
    for method in ("bicubic", "recursive_multiscale-null"):
        for scale in ("4", "16"):
            row = table[(method, scale, METRIC)]
            assert 0.0 <= float(row["mean"]) <= 1.0 and row["n"] == "1"
    assert "## hallucination (lower is better)" in (run / "results.md").read_text()
    cached = len(list((run / "judge_cache").rglob("*.json")))
    assert cached == 4
    before = (run / "results.csv").read_bytes()

    tiny_backend.forwards = 0  # re-judging the folder with the same judge: the states read back hit the cache
    judge = judge_run(run, judge_section(OmegaConf.create(cfg.eval.judge), []), backend=tiny_backend)
    assert tiny_backend.forwards == 0 and judge.cached == 4
    assert (run / "results.csv").read_bytes() == before

    question = "Is anything in the second image invented? Answer 1 or 0."
    section = judge_section(cfg.eval.judge, [f"eval.judge.instruction='{question}'"])
    judge = judge_run(run, section, backend=tiny_backend)
    assert tiny_backend.forwards == 1 and judge.asked == 4
    record = json.loads((run / "eval_record.json").read_text())["config"]["eval"]["judge"]
    assert record["instruction"] == question
    scores = json.loads((run / "per-sample" / "astronaut" / "scores.json").read_text())["scores"]
    assert sum(s[2] == METRIC for s in scores) == 4 and sum(s[2] == "piqe" for s in scores) == 4
    assert rows(run)[("bicubic", "4", "piqe")] == table[("bicubic", "4", "piqe")]  # the other metrics untouched


def test_the_command_line_rejudges_a_folder_and_refuses_other_overrides(make_config, tmp_path, capsys):
    cfg = make_config(
        "+experiment=smoke_eval",
        "eval.max_images=1",
        "eval.steps=1",
        "eval.methods=[bicubic]",
        "eval.metrics=[piqe]",
        "eval.figures=false",
    )
    run = evaluate(cfg)
    assert not any(m == METRIC for _, _, m in rows(run))
    with pytest.raises(ValueError, match="eval/judge=<preset>"):
        judge_main([str(run), "eval.steps=3"])
    with pytest.raises(ValueError, match="no such preset"):
        judge_main([str(run), "eval/judge=nope"])
    with pytest.raises(ValueError, match="eval.judge.name_or_path is null"):
        judge_main([str(run)])
    judge_main([str(run), "eval/judge=tiny", f"eval.judge.cache_dir={tmp_path / 'shared'}"])
    assert capsys.readouterr().out.strip() == str(Path(run) / "results.md")
    assert rows(run)[("bicubic", "4", METRIC)]["n"] == "1"
    assert len(list((tmp_path / "shared").rglob("*.json"))) == 1
