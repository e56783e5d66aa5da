// Package crane pins go-containerregistry's crane, which the release workflow pushes the
// multi-arch image with (release/publish.sh; built by tools/build.sh crane). Its `registry
// serve` is the local registry release/publish.sh is tried against here.
package crane
