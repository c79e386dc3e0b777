# A content profile's content layer (../build-profile.sh): the profile's files, which
# nbpool-start-notebook copies into each sandbox's fresh home instead of the image's own
# (Welcome.ipynb). Only a COPY, so a change of content rebuilds this layer alone.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY home/ /opt/nbpool/content/
ENV NBPOOL_HOME_SOURCE=/opt/nbpool/content
