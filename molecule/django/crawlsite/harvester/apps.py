from django.apps import AppConfig


class HarvesterConfig(AppConfig):
    name = "harvester"
