// Package etcd pins the etcd server that pulsecheck's tests and demo run.
package etcd
