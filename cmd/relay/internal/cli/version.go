package cli

import "runtime/debug"

// Version is set at build time with -ldflags "-X .../internal/cli.Version=v1.2.3"
// (the Dockerfile does). Left at "dev", the binary reports the module
// version the go command recorded instead: v1.2.3 after
// `go install github.com/outboxrelay/outboxrelay/cmd/relay@v1.2.3`, a
// pseudo-version after a build in a git clone.
var Version = "dev"

// buildInfo is what `relay version` prints and tracing reports.
type buildInfo struct {
	version   string // v1.2.3, a pseudo-version, or "dev"
	commit    string // git revision, "-dirty" appended for uncommitted changes; "unknown" when not recorded
	goVersion string
}

// readBuildInfo resolves the binary's version: the -ldflags value wins,
// then the module version the go command stamped. A `go install …@version`
// build records no commit (the module zip has no git metadata).
func readBuildInfo(ldflags string, bi *debug.BuildInfo, ok bool) buildInfo {
	out := buildInfo{version: ldflags, commit: "unknown", goVersion: "unknown"}
	if !ok || bi == nil {
		return out
	}
	out.goVersion = bi.GoVersion
	if (out.version == "" || out.version == "dev") && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		out.version = bi.Main.Version
	}
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			out.commit = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty && out.commit != "unknown" {
		out.commit += "-dirty"
	}
	return out
}

// binaryInfo is readBuildInfo for this process.
func binaryInfo() buildInfo {
	bi, ok := debug.ReadBuildInfo()
	return readBuildInfo(Version, bi, ok)
}
