package vmimage

import (
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// containerRun is what the agent needs to start a container, derived from the image's configuration and the spec.
type containerRun struct {
	Argv       []string
	Entrypoint []string // the image's, for a pod's args given at run time
	Env        []string
	WorkingDir string
	User       string
}

// runConfig merges an image's configuration with a container's command, args, env and working directory as a
// kubelet does: command replaces the image's entrypoint (and drops its cmd); args replace the image's cmd; env
// entries override the image's by name. It is a pure function.
func runConfig(cfg *v1.Config, c Container) containerRun {
	var img v1.Config
	if cfg != nil {
		img = *cfg
	}
	r := containerRun{WorkingDir: img.WorkingDir, User: img.User, Entrypoint: img.Entrypoint}
	switch {
	case len(c.Command) > 0:
		r.Argv = append(append([]string(nil), c.Command...), c.Args...)
	case len(c.Args) > 0:
		r.Argv = append(append([]string(nil), img.Entrypoint...), c.Args...)
	default:
		r.Argv = append(append([]string(nil), img.Entrypoint...), img.Cmd...)
	}
	r.Env = mergeEnv(img.Env, c.Env)
	if c.WorkingDir != "" {
		r.WorkingDir = c.WorkingDir
	}
	if r.WorkingDir == "" {
		r.WorkingDir = "/"
	}
	return r
}

// mergeEnv returns base with over applied: a later NAME=value replaces an earlier one in place.
func mergeEnv(base, over []string) []string {
	out := append([]string(nil), base...)
	idx := map[string]int{}
	for i, kv := range out {
		idx[envName(kv)] = i
	}
	for _, kv := range over {
		if i, ok := idx[envName(kv)]; ok {
			out[i] = kv
			continue
		}
		idx[envName(kv)] = len(out)
		out = append(out, kv)
	}
	return out
}

func envName(kv string) string {
	for i := 0; i < len(kv); i++ {
		if kv[i] == '=' {
			return kv[:i]
		}
	}
	return kv
}
