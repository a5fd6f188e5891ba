"""Print the registered envs: ``python -m tphys.envs``."""

from tphys.envs import list_envs

for name, description in list_envs().items():
    print(f"{name:20s} {description}")
