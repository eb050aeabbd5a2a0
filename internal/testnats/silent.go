package testnats

import (
	"bufio"
	"net"
	"strings"
	"testing"
)

// Silent starts a NATS server that completes the handshake, then answers
// nothing (a node cut off, or being drained), and returns its URL.
func Silent(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		if _, err := conn.Write([]byte(`INFO {"server_id":"silent","version":"2.12.0","proto":1,"max_payload":1048576,"headers":true}` + "\r\n")); err != nil {
			return
		}
		r := bufio.NewReader(conn)
		for answered := false; ; {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if strings.HasPrefix(line, "PING") && !answered {
				answered = true // the handshake's: the last answer
				if _, err := conn.Write([]byte("PONG\r\n")); err != nil {
					return
				}
			}
		}
	}()
	return "nats://" + ln.Addr().String()
}
