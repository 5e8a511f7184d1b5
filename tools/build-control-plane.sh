#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager (helm, for the chart's tests, and krew, for
# the plugin's manifest and archive) from
# the Go module proxy into a cache outside the repo, keyed by version, and does nothing when the
# binaries are present.
#
#   tools/build-control-plane.sh          build what is missing, print the bin directories
#   tools/build-control-plane.sh --check  exit 1 with a message when one is missing, build nothing
#   KUBEPIM_CACHE=/path tools/build-control-plane.sh
#
# The versions are the ones pinned in tools/k8s/go.mod and tools/etcd/go.mod.
set -euo pipefail

check_only=false
[ "${1:-}" = "--check" ] && check_only=true

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${KUBEPIM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubepim}

# pinned_version GO_MOD MODULE : the version MODULE is required at in GO_MOD.
pinned_version() { awk -v m="$2" '$1==m {print $2; exit} $1=="require" && $2==m {print $3; exit}' "$1"; }
k8s_version=$(pinned_version "$here/k8s/go.mod" k8s.io/kubernetes)
etcd_version=$(pinned_version "$here/etcd/go.mod" go.etcd.io/etcd/server/v3)
helm_version=$(pinned_version "$here/helm/go.mod" helm.sh/helm/v3)
krew_version=$(pinned_version "$here/krew/go.mod" sigs.k8s.io/krew)
[ -n "$k8s_version" ] && [ -n "$etcd_version" ] && [ -n "$krew_version" ] || { echo "error: cannot read pinned versions from tools/*/go.mod" >&2; exit 1; }

export GOTOOLCHAIN=local CGO_ENABLED=0

# build_into DIR MODULE_DIR LDFLAGS PKG... : builds each PKG into DIR via a temp file, so a
# build interrupted half-way never leaves a binary that looks complete.
build_into() {
  local dir=$1 moddir=$2 ldflags=$3; shift 3
  mkdir -p "$dir"
  for pkg in "$@"; do
    local name=${pkg##*/}
    case "$pkg" in go.etcd.io/etcd/server/v3) name=etcd ;; esac
    if [ -x "$dir/$name" ]; then continue; fi
    if $check_only; then
      echo "error: $dir/$name is missing; build it with tools/build-control-plane.sh" >&2
      exit 1
    fi
    command -v go >/dev/null || { echo "error: Go (>= 1.26) is needed to build $name; install it and retry" >&2; exit 1; }
    echo "building $name into $dir (cold builds take minutes)" >&2
    local start=$SECONDS
    (cd "$moddir" && go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "$ldflags" -o "$dir/.$name.tmp" "$pkg")
    mv "$dir/.$name.tmp" "$dir/$name"
    echo "built $name in $((SECONDS - start)) s" >&2
  done
}

minor=${k8s_version#v1.}; minor=${minor%%.*}
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  k8s_ldflags+=" -X $pkg.gitCommit=0000000000000000000000000000000000000000 -X $pkg.gitTreeState=clean -X $pkg.buildDate=$now"
done

etcd_dir=$cache/etcd-$etcd_version
k8s_dir=$cache/k8s-$k8s_version
build_into "$etcd_dir" "$here/etcd" "-s -w" go.etcd.io/etcd/server/v3
build_into "$k8s_dir" "$here/k8s" "$k8s_ldflags" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
helm_dir=$cache/helm-$helm_version
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version"
build_into "$helm_dir" "$here/helm" "$helm_ldflags" helm.sh/helm/v3/cmd/helm
krew_dir=$cache/krew-$krew_version
krew_ldflags="-s -w -X sigs.k8s.io/krew/internal/version.gitTag=$krew_version"
build_into "$krew_dir" "$here/krew" "$krew_ldflags" sigs.k8s.io/krew/cmd/krew sigs.k8s.io/krew/cmd/validate-krew-manifest
echo "$etcd_dir"
echo "$k8s_dir"
echo "$helm_dir"
echo "$krew_dir"
