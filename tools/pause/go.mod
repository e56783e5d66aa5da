module pulsecheck.dev/tools/pause

go 1.26
