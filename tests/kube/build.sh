#!/usr/bin/env bash
# Builds the test control plane (kube-apiserver, etcd, kubectl and a stand-in kubelet in one binary, from the
# published Kubernetes modules; see cluster/go.mod) into DIR, once per version: the tests
# find it there. Usage: tests/kube/build.sh DIR
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$1"
out="$(cd "$1" && pwd)"
version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ { print $2; exit } $1 == "require" && $2 == "k8s.io/kubernetes" { print $3; exit }' "$here/cluster/go.mod")
[ -n "$version" ] || { echo "tests/kube/cluster/go.mod names no k8s.io/kubernetes version" >&2; exit 2; }
minor=$(echo "$version" | cut -d. -f2)
bin="$out/kube-cluster"
stamp="$out/built-from"
want="$version $(cat "$here/cluster/go.mod" "$here/cluster/go.sum" "$here"/cluster/*.go | sha256sum | cut -c1-16)"
if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
echo "building kube-apiserver, etcd and kubectl $version (a few minutes the first time)"
cd "$here/cluster"
# Versions as `kubectl version` shows them; the modules alone would say v0.0.0-master.
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags="$ldflags -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$bin.tmp" .
mv "$bin.tmp" "$bin"
for name in kube-apiserver etcd kubectl kubelet watch; do ln -sf kube-cluster "$out/$name"; done
echo "$want" > "$stamp"
