#!/usr/bin/python3
"""The kubelet's part in the boot test, run inside the machine by its python3 (stdlib + yaml).

Started by ``kubelet.service`` exactly as kubeadm's drop-in starts the real one:
``EnvironmentFile=-/etc/default/kubelet`` then ``fake-kubelet $KUBELET_EXTRA_ARGS``. It
registers the Node with the labels and taints from ``--node-labels`` and
``--register-with-taints`` (a POST with the node's own client certificate, as the kubelet
does), then plays the device plugin: ``status.capacity`` advertises ``nvidia.com/gpu``.
Then it stays up, as a kubelet does.
"""

import http.client
import json
import ssl
import sys
import time
import urllib.parse

import yaml

KUBECONFIG = "/etc/kubernetes/kubelet.conf"


def read(path):
    with open(path) as f:
        return f.read().strip()


def flags(argv):
    out = {}
    for a in argv:
        if a.startswith("--") and "=" in a:
            k, v = a[2:].split("=", 1)
            out[k] = v
    return out


def client():
    with open(KUBECONFIG) as f:
        doc = yaml.safe_load(f)
    cluster = doc["clusters"][0]["cluster"]
    user = doc["users"][0]["user"]
    url = urllib.parse.urlsplit(cluster["server"])
    ctx = ssl.create_default_context(cafile=cluster["certificate-authority"])
    ctx.load_cert_chain(user["client-certificate"], user["client-key"])
    return lambda: http.client.HTTPSConnection(url.hostname, url.port, context=ctx, timeout=10)


def call(conn_factory, method, path, body, content_type="application/json"):
    conn = conn_factory()
    conn.request(method, path, json.dumps(body), {"Content-Type": content_type})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def main():
    f = flags(sys.argv[1:])
    name = read("/etc/hostname")
    labels = dict(kv.split("=", 1) for kv in f.get("node-labels", "").split(",") if kv)
    taints = []
    for t in filter(None, f.get("register-with-taints", "").split(",")):
        kv, effect = t.rsplit(":", 1)
        key, _, value = kv.partition("=")
        taints.append({"key": key, "effect": effect, **({"value": value} if value else {})})
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints},
    }
    gpus = int(read("/etc/fakenvml/gpus"))
    capacity = {"cpu": "8", "memory": "64Gi", "pods": "110", "nvidia.com/gpu": str(gpus)}
    status = {"status": {"capacity": capacity, "allocatable": capacity}}
    while True:  # the API server may not be up yet: the kubelet retries too
        try:
            factory = client()
            code, data = call(factory, "POST", "/api/v1/nodes", node)
            if code in (201, 409):
                code, data = call(
                    factory,
                    "PATCH",
                    f"/api/v1/nodes/{name}/status",
                    status,
                    "application/strategic-merge-patch+json",
                )
                if code == 200:
                    print(f"registered {name} with {len(labels)} labels, {len(taints)} taints")
                    break
            print(f"registration: {code} {data[:200]!r}", file=sys.stderr)
        except (OSError, KeyError, yaml.YAMLError) as e:
            print(f"registration: {e}", file=sys.stderr)
        time.sleep(0.2)
    sys.stdout.flush()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
