package testharness

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"testing"
)

// FreeAddr's ports are drawn below the kernel's ephemeral range, which
// outgoing connections and :0 listeners share, never twice, and can be
// listened on.
func TestFreeAddrOutsideEphemeralRange(t *testing.T) {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		fmt.Sscan(string(b), &low)
	}
	seen := map[string]bool{}
	for range 50 {
		addr := FreeAddr(t)
		_, p, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		if port, err := strconv.Atoi(p); err != nil || port >= low {
			t.Fatalf("FreeAddr = %s, want a port below %d", addr, low)
		}
		if seen[addr] {
			t.Fatalf("FreeAddr gave %s twice", addr)
		}
		seen[addr] = true
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("listen on %s: %v", addr, err)
		}
		l.Close()
	}
}
