"""The page's own events through gradio_client: /generate streams steps, bad values are messages, research
endpoints answer, /stop ends the session's run."""

import re
import time

import pytest
from tiny import tiny_llama



@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=3)


@pytest.fixture()
def server(lm, live_server):
    url, _ = live_server(lm, concurrency=2)
    return url + "/"


def steps_made(status: str) -> int:
    """The number of steps a status line reports ("... at step 11 (12 steps) ..."), 0 if none."""
    found = re.search(r"\((\d+) steps?\)", status)
    return int(found.group(1)) if found else 0


def test_generate_streams_every_step_to_a_gradio_client(server):
    from gradio_client import Client
    client = Client(server, verbose=False)
    # every parameter is named after its setting; the rest keep the form's defaults
    job = client.submit(prompt="the cat", max_tokens=12, selection_threshold=0.05, api_name="/generate")
    statuses = [out[4] for out in job]  # each yield: tree, heatmap, curve, text, status, state
    assert len(statuses) >= 2, statuses
    assert any(s.startswith("Generating") for s in statuses[:-1])
    assert statuses[-1].startswith("Done")
    steps_seen = [steps_made(s) for s in statuses if steps_made(s)]
    assert steps_seen == sorted(steps_seen) and steps_seen[-1] == 12


def test_a_bad_value_from_a_gradio_client_is_a_message_naming_the_field(server):
    from gradio_client import Client
    client = Client(server, verbose=False)
    out = client.predict(prompt="   ", api_name="/generate")
    assert "prompt: must be a non-empty string" in out[4]
    out = client.predict(prompt="the cat", seed=-5, api_name="/generate")
    assert "seed: must be an integer in [0, 4294967295], got -5" in out[4]
    out = client.predict(prompt="the cat", max_tokens=500, api_name="/generate")
    assert "max_tokens: must be an integer in [1, 200] on this server, got 500" in out[4]
    assert client.predict(prompt="the cat", max_tokens=2, api_name="/generate")[4].startswith("Done")


def test_sweep_and_baselines_answer_a_gradio_client(server):
    from gradio_client import Client
    client = Client(server, verbose=False)
    _, _, table = client.predict("0.3, 0.05", prompt="the cat", max_tokens=5, api_name="/sweep")
    assert "| 0.05 |" in table and "| 0.3 |" in table
    _, _, err = client.predict("2, 0.1", prompt="the cat", max_tokens=5, api_name="/sweep")
    assert "Error" in err and "[0, 1]" in err
    _, _, err = client.predict("abc", prompt="the cat", max_tokens=5, api_name="/sweep")
    assert "sweep thresholds: must be 1 to 6 numbers in [0, 1]" in err
    html, _ = client.predict(prompt="the cat", max_tokens=5, api_name="/baselines")
    assert "forward passes" in html and "greedy" in html


def test_stop_ends_the_sessions_run_and_keeps_what_was_made(server):
    from gradio_client import Client
    client = Client(server, verbose=False)
    job = client.submit(prompt="the cat", max_tokens=200, selection_threshold=0.02, api_name="/generate")
    deadline = time.time() + 60
    while not job.outputs() and time.time() < deadline:
        time.sleep(0.05)
    client.predict(api_name="/stop")  # same client = same session
    final = job.result()
    status = final[4]
    assert status.startswith("Done (stopped)"), status
    assert steps_made(status) < 200
