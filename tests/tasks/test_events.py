"""The pipeline's event resources: names automations can match on."""

from tasks.events import dataset_resource, model_resource


def test_dataset_resource_is_named_after_the_last_path_part():
    res = dataset_resource("s3://skin-data/isic2019/")
    assert res == {
        "prefect.resource.id": "skin.dataset.isic2019",
        "skin.data_uri": "s3://skin-data/isic2019/",
    }


def test_dataset_resource_sanitises_odd_characters():
    assert dataset_resource("/tmp/my data")["prefect.resource.id"] == "skin.dataset.my-data"


def test_model_resource_carries_the_version():
    assert model_resource("skin-lesion-classifier", "3")["skin.version"] == "3"
