#!/usr/bin/env bash
# Builds the Kubernetes v1.20.2 binaries named after the cache folder argument (default: kube-apiserver
# and kube-controller-manager; `cargo xtask cluster` also asks for kubelet, kube-proxy and
# kube-scheduler) from Debian bookworm's `kubernetes` source package (it vendors its Go
# dependencies) with Debian's Go, and caches them in $1/bin. Idempotent: builds only the
# binaries missing there, and returns at once when none is.
# Called by `cargo xtask kube-build`, `cargo xtask cluster up` and `cargo xtask test`.
set -euo pipefail
OUT=${1:?usage: kube-build.sh CACHE_DIR [BINARY...]}
shift
WANT=("$@")
[ ${#WANT[@]} -gt 0 ] || WANT=(kube-apiserver kube-controller-manager)
VERSION=1.20.5+really1.20.2-1.1+deb12u1
mkdir -p "$OUT/bin"
MISSING=()
for B in "${WANT[@]}"; do
  case "$B" in
    kube-apiserver|kube-controller-manager|kubelet|kube-proxy|kube-scheduler) ;;
    *) echo "kube-build.sh: unknown binary $B" >&2; exit 2 ;;
  esac
  [ -x "$OUT/bin/$B" ] || MISSING+=("$B")
done
if [ ${#MISSING[@]} -eq 0 ]; then
  echo "kube binaries cached in $OUT/bin (${WANT[*]})"; exit 0
fi
echo "building ${MISSING[*]} into $OUT/bin"
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends golang-go etcd-server golang-github-modern-go-reflect2-dev dpkg-dev openssl >/dev/null
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT; cd "$W"
# The source package, through a private apt folder: the system's sources stay untouched.
mkdir -p apt/parts apt/lists/partial apt/cache/archives/partial
MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$MIRROR" ] || MIRROR=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list)
printf 'Types: deb-src\nURIs: %s\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$MIRROR" > apt/parts/src.sources
A="-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=$W/apt/parts -o Dir::State::Lists=$W/apt/lists -o Dir::Cache=$W/apt/cache"
apt-get $A update >/dev/null
apt-get $A source --download-only "kubernetes=$VERSION" >/dev/null 2>&1
dpkg-source -x --skip-debianization kubernetes_*.dsc k8s >/dev/null
# The vendored reflect2 1.0.1 segfaults decoding custom resources under Go 1.19: use Debian's 1.0.2.
rm -rf k8s/vendor/github.com/modern-go/reflect2 && mkdir k8s/vendor/github.com/modern-go/reflect2
cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go k8s/vendor/github.com/modern-go/reflect2/
rm -f k8s/vendor/github.com/modern-go/reflect2/*_test.go
export GOPATH=$W/gopath GOCACHE=$W/gocache GO111MODULE=off CGO_ENABLED=0
mkdir -p gopath/src/k8s.io && ln -sfn "$W/k8s" gopath/src/k8s.io/kubernetes
cd gopath/src/k8s.io/kubernetes
# The source tarball lacks pkg/generated/openapi: generate it first (the API server and the
# controller manager import it; kubelet, kube-proxy and kube-scheduler do not).
if [[ " ${MISSING[*]} " =~ \ kube-(apiserver|controller-manager)\  ]]; then
go build -o "$W/openapi-gen" k8s.io/kubernetes/vendor/k8s.io/kube-openapi/cmd/openapi-gen
DIRS=$(find -H . \( -not \( \( -path './_*' -o -path './.*' -o -path ./vendor \) -prune \) \) -type f -name '*.go' -print0 \
  | xargs -0 grep -l '+k8s:openapi-gen=' | sed 's|^./staging/src|vendor|; s|^./||' | xargs -n1 dirname \
  | grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' | LC_ALL=C sort -u \
  | sed 's|^|k8s.io/kubernetes/|' | paste -sd,)
"$W/openapi-gen" -i "$DIRS" -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
  -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt -r "$W/violations.report" 2>/dev/null
fi
LD="-s -w"
for V in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
  LD="$LD -X $V.gitVersion=v1.20.2 -X $V.gitMajor=1 -X $V.gitMinor=20 -X $V.gitTreeState=clean"
done
for B in "${MISSING[@]}"; do
  go build -ldflags "$LD" -o "$OUT/bin/$B.tmp.$$" "k8s.io/kubernetes/cmd/$B"
  mv "$OUT/bin/$B.tmp.$$" "$OUT/bin/$B"
  "$OUT/bin/$B" --version
done
