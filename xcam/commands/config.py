"""``xcam config``: the effective settings — config file, default classifier, and the settings
profile every findings command uses (after ``plugins.toml`` and the command line)."""

from __future__ import annotations

import click

from xcam.commands._common import plugin_manager, profile_option


def _cam_line(cam: dict) -> str:
    layers = cam["layers"] if isinstance(cam["layers"], str) else ",".join(cam["layers"])
    flags = [f for f in ("aug_smooth", "eigen_smooth") if cam[f]]
    options = ", ".join(f"{k}={v}" for k, v in cam["options"].items())
    return f"{cam['method']} on layers {layers}" + (f" + {' + '.join(flags)}" if flags else "") + \
        (f" ({options})" if options else "")


@click.command("config")
@profile_option
@click.option("--json", "as_json", is_flag=True, help="Print the effective settings as JSON.")
@click.option("--list", "list_profiles", is_flag=True, help="List the available profiles.")
def config(profile: str | None, as_json: bool, list_profiles: bool) -> None:
    """Show the effective settings: config file, default classifier and the settings profile."""
    from xcam.chain.settings import available_profiles, resolve_settings
    from xcam.core.jsonio import dumps

    pm = plugin_manager()
    cfg = pm.config
    profiles = available_profiles(cfg)
    if list_profiles:
        for name in sorted(profiles):
            mark = "*" if name == (profile or cfg.defaults.get("profile")) else " "
            click.echo(f"{mark} {name:<10} {profiles[name].get('description', '')}")
        return
    settings = resolve_settings(pm, profile)
    data = {
        "config_file": str(cfg.path) if cfg.path else None,
        "classifier": cfg.defaults.get("classifier"),
        "profiles": sorted(profiles),
        "settings": settings.as_dict(),
        "plugin_options": cfg.options,
        "overrides_from_defaults": cfg.overrides,
    }
    if as_json:
        click.echo(dumps(data))
        return
    s = data["settings"]
    click.echo(f"config file:   {data['config_file'] or '(none: built-in defaults)'}")
    click.echo(f"classifier:    {data['classifier']}")
    click.echo(f"profile:       {s['profile']} (of {', '.join(data['profiles'])})")
    if s["description"]:
        click.echo(f"               {s['description']}")
    click.echo(f"CAM:           {_cam_line(s['cam'])}")
    for name, cam in s["per_classifier"].items():
        click.echo(f"  {name + ':':<12} {_cam_line(cam)}")
    mask_opts = ", ".join(f"{k}={v}" for k, v in s["mask_options"].items())
    strat_opts = ", ".join(f"{k}={v}" for k, v in s["strategy_options"].items())
    click.echo(f"mask:          {s['mask']}" + (f" ({mask_opts})" if mask_opts else ""))
    click.echo(f"boxes:         {s['strategy']}" + (f" ({strat_opts})" if strat_opts else ""))
    click.echo(f"ensembler:     {s['ensembler']}")
    click.echo(f"work grid:     {s['work_size']}")
    if cfg.overrides:
        click.echo(f"[defaults] overrides: {cfg.overrides}")
