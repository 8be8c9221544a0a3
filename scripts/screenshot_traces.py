"""What a researcher sees in MLflow: the Traces tab of a verbal run, screenshotted with headless Chromium.

    python scripts/screenshot_traces.py          # writes docs/mlflow_traces.png

Trains 2 ALIVE steps of `reward=verbal` from the newest math warm start under data/ (a tiny random model
when there is none: the spans are there, the text is noise), every step a transcript step, into a fresh
SQLite store; serves it with `mlflow server` on 127.0.0.1; and takes two screenshots with Debian's
`chromium` (apt install chromium) of the run's Traces tab (one row per task chain and per SCoRe chain).
Not run by CI: it needs a browser and minutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shoot(browser: str, url: str, out: Path, wait_ms: int, size: str = "1600,1000") -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={size}", f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=180)
    print(f"{out} <- {url}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "mlflow_traces.png")
    ap.add_argument("--data", type=Path, default=REPO / "data")
    ap.add_argument("--wait-ms", type=int, default=20000, help="virtual time the page gets to render")
    args = ap.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SystemExit("no chromium found: apt install chromium")
    warm = sorted((args.data / "warmstart").glob("math-*/metrics.json")) if (args.data / "warmstart").exists() else []
    init = [f"model.init_from={warm[-1].parent}"] if warm else []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        env.pop("MLFLOW_TRACKING_URI", None)
        subprocess.run([sys.executable, str(REPO / "train.py"), "+experiment=math", "reward=verbal", *init,
                        "warmstart.enabled=false", "trainer.max_steps=2", "trainer.log_transcripts_every=1",
                        "trainer.docs_per_step=4", "trainer.max_tasks_per_step=4", "benchmark.eval_size=8",
                        "trainer.progress_bar=false", f"paths.root_dir={root}", f"paths.data_dir={args.data}"],
                       cwd=root, env=env, check=True)
        from mlflow.tracking import MlflowClient

        uri = f"sqlite:///{root}/mlflow.db"
        c = MlflowClient(uri)
        exp = c.get_experiment_by_name("alive")
        (run,) = c.search_runs([exp.experiment_id])
        traces = c.search_traces(locations=[exp.experiment_id], run_id=run.info.run_id,
                                 filter_string="tags.phase = 'train'")
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                                   "--backend-store-uri", uri, "--workers", "1"], cwd=root, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(240):
                try:
                    urllib.request.urlopen(f"{base}/health", timeout=2)
                    break
                except OSError:
                    time.sleep(0.5)
            page = f"{base}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}/traces"
            shoot(browser, page, args.out, args.wait_ms)
            print(f"{len(traces)} training traces; open one: {page}?selectedEvaluationId={traces[0].info.trace_id}"
                  if traces else "no training traces")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
