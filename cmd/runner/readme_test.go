package main

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestREADME_ServeFlagsDocumented keeps the README's configuration table in
// step with `runner serve -h`: every flag and its environment variable.
func TestREADME_ServeFlagsDocumented(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	var stdout, stderr bytes.Buffer
	require.Equal(t, 0, run(context.Background(), []string{"serve", "-h"}, &stdout, &stderr))

	help := stdout.String() + stderr.String()
	flagRe := regexp.MustCompile(`(?m)^  -([a-z][a-z0-9-]*)`)
	envRe := regexp.MustCompile(`\[([A-Z][A-Z0-9_]*)\]`)
	flags := flagRe.FindAllStringSubmatch(help, -1)
	require.NotEmpty(t, flags, "no flags found in:\n%s", help)
	var missing []string
	for _, m := range flags {
		if !strings.Contains(string(readme), "`--"+m[1]+"`") {
			missing = append(missing, "--"+m[1])
		}
	}
	for _, m := range envRe.FindAllStringSubmatch(help, -1) {
		if !strings.Contains(string(readme), "`"+m[1]+"`") {
			missing = append(missing, m[1])
		}
	}
	require.Empty(t, missing, "not in the README's configuration table")
}

// The README's complete program is examples/invoice, verbatim: the file is
// compiled by go build ./... and run by the integration tests.
func TestREADME_CompleteProgramIsExamplesInvoice(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	prog, err := os.ReadFile("../../examples/invoice/main.go")
	require.NoError(t, err)
	require.True(t, strings.Contains(string(readme), "```go\n"+string(prog)+"```\n"),
		"the README's complete program differs from examples/invoice/main.go")
}
