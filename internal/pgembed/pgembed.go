// Package pgembed starts a throwaway PostgreSQL server for the demo and the
// tests: from the PostgreSQL binaries installed on the machine when there are
// any, else in a Docker container through testcontainers-go. The server lives
// in a temporary directory (or container) that Stop removes.
//
// PostgreSQL refuses to run as root. When this process is root, the server runs
// as the unprivileged "postgres" user that Debian's packages create, and its
// directory is owned by that user.
package pgembed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrNoPostgres is returned by Start when no way to run PostgreSQL was found.
var ErrNoPostgres = errors.New(`no PostgreSQL available: set DATABASE_URL (or TEST_DATABASE_URL for the tests) to a server you have, ` +
	`or install the PostgreSQL server binaries (Debian/Ubuntu: "apt-get install postgresql"; macOS: "brew install postgresql@16"), ` +
	`or start a Docker engine so that testcontainers-go can run postgres:16-alpine`)

// dirPrefix names the temporary directories this package creates, so that a
// later run can find and remove the ones a killed process left behind.
const dirPrefix = "pgonce-pg-"

// Options configure a throwaway server.
type Options struct {
	// Settings are extra postgresql.conf settings, e.g. {"fsync": "off"}.
	Settings map[string]string

	// Logf, when set, receives one line per step (finding binaries, initdb,
	// start), for commands that show progress.
	Logf func(format string, args ...any)
}

// Server is a running throwaway PostgreSQL server.
type Server struct {
	// URL connects as the superuser "postgres" to the database "postgres".
	URL string

	// Kind is "local" (installed binaries) or "container" (testcontainers-go).
	Kind string

	stop func(ctx context.Context) error
	ctl  func(ctx context.Context, args ...string) error // pg_ctl, for a local server
}

// Restart stops the server with a fast shutdown (every session is cut off,
// as in an outage or a failover) and starts it again on the same port. Only
// for a local server.
func (s *Server) Restart(ctx context.Context) error {
	if s.ctl == nil {
		return errors.New("pgembed: restart needs a local server")
	}
	return s.ctl(ctx, "-m", "fast", "-w", "-t", "60", "restart")
}

// Down stops the server (fast shutdown) without removing it; Up starts it
// again. Only for a local server.
func (s *Server) Down(ctx context.Context) error {
	if s.ctl == nil {
		return errors.New("pgembed: needs a local server")
	}
	return s.ctl(ctx, "-m", "fast", "-w", "-t", "60", "stop")
}

// Up starts a server that Down stopped.
func (s *Server) Up(ctx context.Context) error {
	if s.ctl == nil {
		return errors.New("pgembed: needs a local server")
	}
	return s.ctl(ctx, "-w", "-t", "60", "start")
}

// Stop shuts the server down and removes its files.
func (s *Server) Stop(ctx context.Context) error {
	if s == nil || s.stop == nil {
		return nil
	}
	stop := s.stop
	s.stop = nil
	return stop(ctx)
}

// Start runs a throwaway server: from the installed binaries when found, else
// through testcontainers-go when a Docker engine answers. It returns an error
// wrapping ErrNoPostgres when neither is available.
func Start(ctx context.Context, opts *Options) (*Server, error) {
	if opts == nil {
		opts = &Options{}
	}
	binDir, binErr := FindBinaries()
	if binErr == nil {
		return StartLocal(ctx, binDir, opts)
	}
	logf(opts, "no PostgreSQL binaries found (%v); trying Docker through testcontainers-go", binErr)
	srv, err := startContainer(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("%w (binaries: %w; docker: %w)", ErrNoPostgres, binErr, err)
	}
	return srv, nil
}

// FindBinaries returns the directory holding initdb, pg_ctl and postgres: the
// PG_BIN environment variable when set, else the newest of Debian's versioned
// directories (/usr/lib/postgresql/N/bin), else the directory of initdb on
// PATH.
func FindBinaries() (string, error) {
	has := func(dir string) bool {
		for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
			if st, err := os.Stat(filepath.Join(dir, name)); err != nil || st.IsDir() {
				return false
			}
		}
		return true
	}
	if dir := os.Getenv("PG_BIN"); dir != "" {
		if has(dir) {
			return dir, nil
		}
		return "", fmt.Errorf("PG_BIN=%s does not hold initdb, pg_ctl and postgres", dir)
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	for _, dir := range dirs {
		if has(dir) {
			return dir, nil
		}
	}
	if path, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(path); err == nil {
			path = real
		}
		if dir := filepath.Dir(path); has(dir) {
			return dir, nil
		}
	}
	return "", errors.New("initdb, pg_ctl and postgres not found in PG_BIN, /usr/lib/postgresql/*/bin or PATH")
}

func versionOf(binDir string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(binDir)), 64)
	return v
}

// StartLocal initialises a cluster in a new temporary directory and starts it
// on a free loopback port.
func StartLocal(ctx context.Context, binDir string, opts *Options) (*Server, error) {
	if opts == nil {
		opts = &Options{}
	}
	reapOrphans(binDir)

	cred, err := serverCredential()
	if err != nil {
		return nil, err
	}

	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("creating server directory: %w", err)
	}
	cleanup := func() { _ = os.RemoveAll(dir) }
	if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		cleanup()
		return nil, fmt.Errorf("writing owner file: %w", err)
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			cleanup()
			return nil, fmt.Errorf("giving %s to the postgres user: %w", dir, err)
		}
	}
	dataDir := filepath.Join(dir, "data")

	logf(opts, "initdb in %s (binaries %s)", dataDir, binDir)
	if out, err := run(ctx, cred, dir, filepath.Join(binDir, "initdb"),
		"-D", dataDir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"); err != nil {
		cleanup()
		return nil, fmt.Errorf("initdb: %w: %s", err, out)
	}

	// A port found free can be taken before the server binds it (other test
	// processes start servers at the same time), so a failed start is retried
	// on another port.
	var lastErr error
	for range 5 {
		port, err := freePort()
		if err != nil {
			cleanup()
			return nil, err
		}
		if err := writeConf(dataDir, dir, port, opts.Settings, cred); err != nil {
			cleanup()
			return nil, err
		}
		logf(opts, "starting postgres on 127.0.0.1:%d", port)
		out, err := run(ctx, cred, dir, filepath.Join(binDir, "pg_ctl"),
			"-D", dataDir, "-l", filepath.Join(dir, "server.log"), "-w", "-t", "60", "start")
		if err == nil {
			srv := &Server{
				URL:  fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port),
				Kind: "local",
			}
			srv.ctl = func(ctx context.Context, args ...string) error {
				all := append([]string{"-D", dataDir, "-l", filepath.Join(dir, "server.log")}, args...)
				out, err := run(ctx, cred, dir, filepath.Join(binDir, "pg_ctl"), all...)
				if err != nil {
					return fmt.Errorf("pg_ctl %v: %w: %s", args, err, out)
				}
				return nil
			}
			srv.stop = func(ctx context.Context) error {
				_, err := run(ctx, cred, dir, filepath.Join(binDir, "pg_ctl"), "-D", dataDir, "-m", "fast", "-w", "-t", "30", "stop")
				if err != nil {
					_, err = run(context.WithoutCancel(ctx), cred, dir, filepath.Join(binDir, "pg_ctl"), "-D", dataDir, "-m", "immediate", "-w", "stop")
				}
				cleanup()
				return err
			}
			return srv, nil
		}
		serverLog, _ := os.ReadFile(filepath.Join(dir, "server.log"))
		lastErr = fmt.Errorf("pg_ctl start: %w: %s %s", err, out, lastLines(serverLog, 5))
	}
	cleanup()
	return nil, lastErr
}

// serverCredential returns the user the server must run as: nil (this
// process's user) unless this process is root, then Debian's "postgres" user.
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, and PostgreSQL refuses to: no unprivileged \"postgres\" user to run it as (%w)", err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
}

func writeConf(dataDir, sockDir string, port int, settings map[string]string, cred *syscall.Credential) error {
	all := map[string]string{
		"listen_addresses":        "'127.0.0.1'",
		"port":                    strconv.Itoa(port),
		"unix_socket_directories": "'" + sockDir + "'",
		"max_connections":         "300",
		"logging_collector":       "off",
	}
	for k, v := range settings {
		all[k] = v
	}
	keys := make([]string, 0, len(all))
	for k := range all {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, all[k])
	}
	// postgresql.auto.conf is read last, so each retry's port replaces the last.
	path := filepath.Join(dataDir, "postgresql.auto.conf")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if cred != nil {
		if err := os.Chown(path, int(cred.Uid), int(cred.Gid)); err != nil {
			return fmt.Errorf("chown %s: %w", path, err)
		}
	}
	return nil
}

func run(ctx context.Context, cred *syscall.Credential, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	// The server gets its own process group, so that a Ctrl-C in the terminal
	// reaches this process (which then shuts down in order) and not the server.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cred}
	cmd.Env = append(filteredEnv(), "LC_ALL=C")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return bytes.TrimSpace(out.Bytes()), err
}

func filteredEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// reapOrphans stops and removes servers whose owning process is gone: a test
// binary killed by a timeout cannot run its cleanup.
func reapOrphans(binDir string) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, dir := range dirs {
		raw, err := os.ReadFile(filepath.Join(dir, "owner.pid"))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
		if err != nil || processAlive(pid) {
			continue
		}
		cred, _ := serverCredential()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, _ = run(ctx, cred, dir, filepath.Join(binDir, "pg_ctl"), "-D", filepath.Join(dir, "data"), "-m", "immediate", "-w", "stop")
		cancel()
		_ = os.RemoveAll(dir)
	}
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

func logf(opts *Options, format string, args ...any) {
	if opts.Logf != nil {
		opts.Logf(format, args...)
	}
}
