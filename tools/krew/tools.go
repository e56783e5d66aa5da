// Package krew pins krew's validate-krew-manifest, which pulsecheck's CI runs on the krew plugin
// manifest the release generates (release/krew.sh; built by tools/build.sh krew).
package krew
