package pgembed

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
)

// containerImage is the image used when no local binaries exist.
const containerImage = "postgres:16-alpine"

// startContainer runs PostgreSQL in Docker through testcontainers-go, after
// checking that a Docker engine answers (testcontainers-go panics or hangs
// on some machines without one).
func startContainer(ctx context.Context, opts *Options) (srv *Server, err error) {
	defer func() {
		if r := recover(); r != nil {
			srv, err = nil, fmt.Errorf("testcontainers-go: %v", r)
		}
	}()
	provider, err := testcontainers.NewDockerProvider()
	if err != nil {
		return nil, fmt.Errorf("no Docker engine: %w", err)
	}
	healthCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err = provider.Health(healthCtx)
	cancel()
	_ = provider.Close()
	if err != nil {
		return nil, fmt.Errorf("no Docker engine answers: %w", err)
	}

	args := []string{}
	keys := make([]string, 0, len(opts.Settings))
	for k := range opts.Settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "-c", k+"="+opts.Settings[k])
	}
	args = append(args, "-c", "max_connections=300")

	logf(opts, "starting %s through testcontainers-go", containerImage)
	c, err := tcpostgres.Run(ctx, containerImage,
		tcpostgres.WithDatabase("postgres"),
		tcpostgres.WithUsername("postgres"),
		tcpostgres.WithPassword("postgres"),
		tcpostgres.BasicWaitStrategies(),
		testcontainers.WithCmdArgs(args...),
	)
	if err != nil {
		if c != nil {
			_ = testcontainers.TerminateContainer(c)
		}
		return nil, fmt.Errorf("starting container: %w", err)
	}
	url, err := c.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		_ = testcontainers.TerminateContainer(c)
		return nil, fmt.Errorf("container connection string: %w", err)
	}
	return &Server{
		URL:  url,
		Kind: "container",
		stop: func(context.Context) error { return testcontainers.TerminateContainer(c) },
	}, nil
}
