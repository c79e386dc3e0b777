# A content profile's packages layer (../build-profile.sh): the profile's requirements.txt and
# apt.txt installed on top of its base image (nbpool/notebook unless the profile names one).
# The context holds requirements.lock (every wheel pinned by sha256), wheels/ and debs/, all
# fetched on the host: the build itself has no network (--network=none).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}

USER root
ENV PIP_CONFIG_FILE=/dev/null \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY debs/ /tmp/build/debs/
RUN set -eu; \
    if ls /tmp/build/debs/*.deb >/dev/null 2>&1; then dpkg -i /tmp/build/debs/*.deb; fi; \
    rm -rf /tmp/build/debs /var/cache/apt/archives/*.deb
COPY requirements.lock /tmp/build/requirements.lock
COPY wheels/ /tmp/build/wheels/
RUN set -eu; \
    if [ -s /tmp/build/requirements.lock ]; then \
        /opt/notebook/bin/pip install --no-index --find-links /tmp/build/wheels \
            --require-hashes --only-binary=:all: -r /tmp/build/requirements.lock; \
        /opt/notebook/bin/pip check; \
    fi; \
    rm -rf /tmp/build
# As in the notebook image: no setuid or setgid programs (a Debian package may bring some).
RUN find / -xdev -type f -perm /6000 -exec chmod ug-s {} + \
    && test -z "$(find / -xdev -type f -perm /6000)"
USER jovyan
