// Package promtool pins the promtool CLI that pulsecheck's CI uses to check and unit-test the alerting rules.
package promtool
