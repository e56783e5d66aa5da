// Package kube pins the kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and
// kubectl that pulsecheck's tests and demo run (the `tool` lines of go.mod). Nothing here is compiled into pulsecheck.
package kube
