package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"
)

// flags is a flag set whose every flag can also be set by an environment
// variable; a flag on the command line wins over the variable.
type flags struct {
	*flag.FlagSet
	errs  []error
	after []func() // run after parsing, to assemble values from several flags
}

func newFlags(name, usage string) *flags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "%s\n\nFlags (each also read from the environment variable in brackets):\n", usage)
		fs.PrintDefaults()
	}
	return &flags{FlagSet: fs}
}

func envUsage(env, usage string) string {
	if env == "" {
		return usage
	}
	return usage + " [" + env + "]"
}

// The environment sets a flag's value, not its default: help and usage
// errors show the built-in defaults, never a value from the environment (a
// token, a password in a URL).

func (f *flags) string(name, env, def, usage string) *string {
	p := f.String(name, def, envUsage(env, usage))
	f.fromEnv(name, env, "")
	return p
}

func (f *flags) int(name, env string, def int, usage string) *int {
	p := f.Int(name, def, envUsage(env, usage))
	f.fromEnv(name, env, "not an integer")
	return p
}

func (f *flags) float(name, env string, def float64, usage string) *float64 {
	p := f.Float64(name, def, envUsage(env, usage))
	f.fromEnv(name, env, "not a number")
	return p
}

func (f *flags) duration(name, env string, def time.Duration, usage string) *time.Duration {
	p := f.Duration(name, def, envUsage(env, usage))
	f.fromEnv(name, env, "not a duration (e.g. 10s, 1m)")
	return p
}

func (f *flags) bool(name, env string, def bool, usage string) *bool {
	p := f.Bool(name, def, envUsage(env, usage))
	f.fromEnv(name, env, "not a boolean")
	return p
}

// fromEnv sets flag name from the environment variable env, when set.
func (f *flags) fromEnv(name, env, what string) {
	if env == "" {
		return
	}
	v, ok := os.LookupEnv(env)
	if !ok {
		return
	}
	if err := f.Lookup(name).Value.Set(strings.TrimSpace(v)); err != nil {
		f.errs = append(f.errs, fmt.Errorf("%s=%q: %s", env, v, what))
	}
}

// parse parses args and reports environment variables that did not parse.
func (f *flags) parse(args []string) error {
	if err := f.Parse(args); err != nil {
		return err
	}
	if len(f.errs) > 0 {
		return fmt.Errorf("invalid environment: %v", f.errs)
	}
	for _, fn := range f.after {
		fn()
	}
	return nil
}

// parseTokens parses "principal:token,principal:token" into token ->
// principal.
func parseTokens(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, pair := range strings.Split(s, ",") {
		pair = strings.TrimSpace(pair)
		if pair == "" {
			continue
		}
		principal, token, ok := strings.Cut(pair, ":")
		if !ok || principal == "" || token == "" {
			return nil, fmt.Errorf("API tokens: %q is not principal:token", redactToken(pair))
		}
		if len(token) < 16 {
			return nil, fmt.Errorf("API tokens: the token of %q is shorter than 16 characters", principal)
		}
		if _, dup := out[token]; dup {
			return nil, fmt.Errorf("API tokens: a token is given twice")
		}
		out[token] = principal
	}
	return out, nil
}

func redactToken(pair string) string {
	if p, _, ok := strings.Cut(pair, ":"); ok {
		return p + ":***"
	}
	return "***"
}
