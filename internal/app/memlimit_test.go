package app

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCgroupMemoryLimit(t *testing.T) {
	const unlimitedV1 = "9223372036854771712"
	tests := []struct {
		name   string
		self   string
		files  map[string]string // under the fake /sys/fs/cgroup
		want   int64
		wantOK bool
	}{
		{"v2 container, own namespace", "0::/\n",
			map[string]string{"memory.max": "1073741824\n"}, 1 << 30, true},
		{"v2 no limit", "0::/\n",
			map[string]string{"memory.max": "max\n"}, 0, false},
		{"v2 systemd service, MemoryMax on the unit", "0::/system.slice/stowline.service\n",
			map[string]string{"memory.max": "max", "system.slice/memory.max": "max", "system.slice/stowline.service/memory.max": "536870912"}, 1 << 29, true},
		{"v2 lower limit on a parent slice", "0::/system.slice/stowline.service\n",
			map[string]string{"system.slice/memory.max": "268435456", "system.slice/stowline.service/memory.max": "536870912"}, 1 << 28, true},
		{"v2 host path not mounted in the container", "0::/kubepods/burstable/pod1/abc\n",
			map[string]string{"memory.max": "268435456"}, 1 << 28, true},
		{"v1 container", "4:memory:/kubepods/pod1/abc\n3:cpu:/kubepods/pod1/abc\n",
			map[string]string{"memory/memory.limit_in_bytes": "268435456"}, 1 << 28, true},
		{"v1 unlimited", "4:memory:/process_api/595344191a36\n",
			map[string]string{"memory/memory.limit_in_bytes": unlimitedV1, "memory/process_api/595344191a36/memory.limit_in_bytes": unlimitedV1}, 0, false},
		{"hybrid: v1 memory controller, v2 unified without it", "4:memory:/user.slice\n0::/user.slice\n",
			map[string]string{"memory/user.slice/memory.limit_in_bytes": "134217728", "memory.max": "bogus"}, 1 << 27, true},
		{"no cgroup files", "0::/\n", nil, 0, false},
		{"garbage", "not a cgroup line\n", map[string]string{"memory.max": "1024"}, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			for name, content := range tt.files {
				p := filepath.Join(root, name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, ok := cgroupMemoryLimit([]byte(tt.self), root)
			if ok != tt.wantOK || (ok && got != tt.want) {
				t.Errorf("cgroupMemoryLimit = %d, %v; want %d, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}
