// Command pause is the sandbox ("pause") container of the lab's real nodes: it holds a Pod's
// namespaces open and does nothing else. The lab builds it here, statically, and packs it into
// an image it imports into each node's containerd, because the machines the tests run on reach
// no container registry. Like the upstream pause, it exits on SIGINT or SIGTERM and reaps the
// children it inherits when it is a PID namespace's init.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
