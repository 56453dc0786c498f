package cli

import (
	"runtime/debug"
	"testing"
)

func TestReadBuildInfo(t *testing.T) {
	t.Parallel()
	vcs := func(rev, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}
	}
	tests := []struct {
		name    string
		ldflags string
		bi      *debug.BuildInfo
		ok      bool
		want    buildInfo
	}{
		{"no build info", "dev", nil, false, buildInfo{"dev", "unknown", "unknown"}},
		{"go install @version", "dev",
			&debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.3"}}, true,
			buildInfo{"v1.2.3", "unknown", "go1.26.8"}},
		{"build in a clone", "dev",
			&debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v0.0.0-20261127234032-eb2f39042695"}, Settings: vcs("eb2f39042695", "false")}, true,
			buildInfo{"v0.0.0-20261127234032-eb2f39042695", "eb2f39042695", "go1.26.8"}},
		{"uncommitted changes", "dev",
			&debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}, Settings: vcs("eb2f39042695", "true")}, true,
			buildInfo{"dev", "eb2f39042695-dirty", "go1.26.8"}},
		{"ldflags win", "v2.0.0",
			&debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.3"}}, true,
			buildInfo{"v2.0.0", "unknown", "go1.26.8"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := readBuildInfo(tt.ldflags, tt.bi, tt.ok); got != tt.want {
				t.Errorf("readBuildInfo = %+v, want %+v", got, tt.want)
			}
		})
	}
}
