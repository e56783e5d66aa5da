// Package kube pins the kube-apiserver and kube-controller-manager that
// pulsecheck's tests and demo run. Nothing here is compiled into pulsecheck.
package kube
