# The sandbox's Jupyter server settings that nbpool decides at run time, from the environment
# the spawner gives the container: which other pages may use the server with its token
# (NBPOOL_EMBED_ORIGINS; see nbpool_sandbox_config, which is shared/sandbox_config.py).
from nbpool_sandbox_config import configure

configure(c)  # noqa: F821 - the config object Jupyter provides
