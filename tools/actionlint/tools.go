// Package actionlint pins the actionlint CLI that pulsecheck's CI runs on .github/workflows/*.yml
// (.ci/check-deploy.sh; built by tools/build.sh actionlint).
package actionlint
