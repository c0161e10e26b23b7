"""The official MONAI Label client's side of `process/torchrun.rs`: each command makes the
client calls a MONAI Label user makes and prints one JSON line for the Rust test to check.

    torchrun_client.py URL infer IMAGE OUT      client.infer (low resolution), the label moved to OUT
    torchrun_client.py URL train PARAMS_JSON    train_start, then poll train_status to the end
    torchrun_client.py URL start PARAMS_JSON    train_start only
    torchrun_client.py URL stop                 train_stop
"""
import json
import shutil
import sys
import time

from monailabel.client import MONAILabelClient

MODEL = "wholeBody_ct_segmentation"
CLIENT_ID = "ferrolabel-torchrun-test"


def start(client, params):
    task = client.train_start(MODEL, params)
    assert task["status"] == "RUNNING", task
    assert task["request"]["client_id"] == CLIENT_ID, task
    return task


def train(client, params, timeout=600):
    task = start(client, params)
    assert client.train_status(check_if_running=True) is True
    t0 = time.time()
    while True:
        status = client.train_status()
        if status["status"] != "RUNNING":
            break
        assert time.time() - t0 < timeout, "the training did not end"
        time.sleep(0.5)
    assert status["id"] == task["id"], (status, task)
    assert client.train_status(check_if_running=True) is False
    status["seconds"] = time.time() - t0
    return status


def main():
    url, command, *args = sys.argv[1:]
    client = MONAILabelClient(url, client_id=CLIENT_ID)
    if command == "infer":
        image, out = args
        path, params = client.infer(MODEL, image, {"highres": False})
        shutil.move(path, out)
        result = {"params": params}
    elif command == "train":
        result = train(client, json.loads(args[0]))
    elif command == "start":
        result = start(client, json.loads(args[0]))
    elif command == "stop":
        result = client.train_stop()
    else:
        raise SystemExit(f"unknown command {command}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
