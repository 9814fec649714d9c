"""The provider kinds, picked by `kind:`. A kind is one module: its settings, their checks and its client."""

from .aws_secrets import SecretsManagerSource, SsmParameterSource
from .aws_sigv4 import AwsSigV4Source
from .base import Source
from .command import CommandSource
from .file import FileSource
from .github_app import GitHubAppSource
from .google_service_account import GoogleServiceAccountSource
from .http import HttpSource
from .oauth2 import OAuth2Source
from .vault import VaultSource

KINDS: dict[str, type[Source]] = {
    cls.KIND: cls
    for cls in (
        HttpSource,
        OAuth2Source,
        FileSource,
        CommandSource,
        GitHubAppSource,
        GoogleServiceAccountSource,
        AwsSigV4Source,
        VaultSource,
        SecretsManagerSource,
        SsmParameterSource,
    )
}
