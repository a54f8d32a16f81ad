"""The batcher: concurrent requests are scored together; out of memory splits a batch; stopping answers everyone."""

import pytest
import torch
from serving import client, samples, serving

from coz_train.critic_server.batcher import Batcher
from coz_train.critic_server.protocol import ChatRequest, RequestError


def request(tag: int) -> ChatRequest:
    return ChatRequest(conversation=[{"role": "user", "content": [{"type": "text", "text": str(tag)}]}], max_tokens=1)


def tag(request: ChatRequest) -> str:
    return request.conversation[0]["content"][0]["text"]


def answer_all(batcher: Batcher, jobs: list) -> None:
    batcher.start()
    for job in jobs:
        assert job.done.wait(30)
    assert batcher.close()
    batcher.stop()


def test_concurrent_requests_are_batched(cfg, critic):
    images, texts = samples(6, seed=2)
    with serving(cfg, critic, max_batch=4, batch_wait_ms=1000) as srv:  # generous: all 6 arrive in time
        scores = client(cfg, srv.url, top_logprobs=-1, concurrency=6).score(images, texts)
        stats = srv.stats
    assert scores == pytest.approx(critic.score(images, texts), abs=1e-4)
    assert stats["requests"] == 6
    assert 2 <= stats["batches"] <= 3
    assert max(stats["batch_sizes"]) <= 4


def test_queued_requests_are_grouped_up_to_max_batch():
    batches: list[list[str]] = []

    def complete(requests: list[ChatRequest]) -> list[dict]:
        batches.append([tag(r) for r in requests])
        return [{"answer": tag(r)} for r in requests]

    batcher = Batcher(complete, max_batch=3, batch_wait_ms=0)
    jobs = [batcher.submit(request(i)) for i in range(7)]  # queued before the thread starts
    answer_all(batcher, jobs)
    assert batches == [["0", "1", "2"], ["3", "4", "5"], ["6"]]
    assert [job.result for job in jobs] == [{"answer": str(i)} for i in range(7)]
    assert batcher.stats == {"batches": 3, "requests": 7, "batch_sizes": [3, 3, 1]}


def test_out_of_memory_splits_a_batch_in_halves_and_a_single_request_is_a_503():
    sizes: list[int] = []

    def complete(requests: list[ChatRequest]) -> list[dict]:
        sizes.append(len(requests))
        if len(requests) > 1 or tag(requests[0]) == "3":
            raise torch.OutOfMemoryError("out of memory")
        return [{"answer": tag(requests[0])}]

    batcher = Batcher(complete, max_batch=4, batch_wait_ms=0)
    jobs = [batcher.submit(request(i)) for i in range(4)]
    answer_all(batcher, jobs)
    assert sizes == [4, 2, 1, 1, 2, 1, 1]
    assert [job.result for job in jobs[:3]] == [{"answer": "0"}, {"answer": "1"}, {"answer": "2"}]
    assert jobs[3].error == (503, "The critic ran out of memory on this request.")
    assert batcher.stats["batch_sizes"] == [1, 1, 1, 1]


def test_a_failing_batch_is_a_500_and_the_batcher_keeps_serving():
    def complete(requests: list[ChatRequest]) -> list[dict]:
        if tag(requests[0]) == "0":
            raise ValueError("boom")
        return [{"answer": tag(r)} for r in requests]

    batcher = Batcher(complete, max_batch=1, batch_wait_ms=0)
    jobs = [batcher.submit(request(i)) for i in range(2)]
    answer_all(batcher, jobs)
    assert jobs[0].error == (500, "The critic failed: ValueError: boom") and jobs[0].result is None
    assert jobs[1].result == {"answer": "1"}


def test_a_closed_batcher_refuses_new_requests_and_answers_the_queued_ones():
    batcher = Batcher(lambda requests: [{} for _ in requests], max_batch=4, batch_wait_ms=0)
    queued = batcher.submit(request(0))  # the thread never started: nothing runs it
    assert batcher.close() and not batcher.close()
    with pytest.raises(RequestError) as err:
        batcher.submit(request(1))
    assert err.value.status == 503
    batcher.stop()
    assert queued.done.is_set() and queued.error == (503, "The critic server is shutting down.")
