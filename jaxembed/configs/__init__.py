"""The configs of the default job and of every paper reproduction, shipped with the
package so that an installed wheel runs them: `jaxembed train --config=<name>[:args]`
(`jaxembed configs` lists them). The repository's `configs/<name>.py` are thin
wrappers of these, so `--config=configs/<name>.py` keeps working."""
