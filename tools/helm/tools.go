// Package helm pins the helm CLI that pulsecheck's CI uses to lint and render charts/pulsecheck.
package helm
