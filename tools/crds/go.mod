// Pins the prometheus-operator release whose CRDs (ServiceMonitor, PrometheusRule) the
// deploy tests install into the test apiserver. Nothing imports the module: its files
// example/prometheus-operator-crd/*.yaml are read from GOMODCACHE, where
// `bash tools/build.sh crds` puts them and prints their folder. Do not run `go mod tidy`
// here: with no imports it would drop the require.
module github.com/pulsecheck/pulsecheck/tools/crds

go 1.26.0

require github.com/prometheus-operator/prometheus-operator v0.85.0
