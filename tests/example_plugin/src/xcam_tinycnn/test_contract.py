"""The plugin's own contract test, run with ``pytest --pyargs xcam_tinycnn``
(the ``xcam_pm`` fixture comes from xcam's pytest plugin, ``xcam.testing``)."""

def test_tinycnn_meets_the_xcam_contract(xcam_pm):
    from xcam.testing import check_classifier

    report = check_classifier(xcam_pm.classifier("tinycnn"))
    assert report.ok, report.problems
