/* test_domain_xml.c — a desktop's libvirt domain, built from the pool's
 * settings or the operator's template: names and paths escaped, the gold's
 * whole chain named with libvirt's relabelling off, and the result accepted
 * by libvirt (its test driver parses and validates the XML). */
#include "helpers.h"
#include "daemon.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *dir;
static char gold[4200];
static vdi_config *config;

static void setup(void)
{
    dir = th_tempdir("domain-xml");
    snprintf(gold, sizeof gold, "%s/gold's & <gold>.qcow2", dir);
    free(th_must("qemu-img create -q -f qcow2 \"%s\" 64M", gold));
}

static void teardown(void)
{
    vdi_config_unref(config);
    config = NULL;
    th_tempdir_remove(dir);
}

static const vdi_pool_config *pool_with(const char *domain)
{
    char conf[4096];
    snprintf(conf, sizeof conf,
             "datastores = ( { name = \"local\"; path = \"%s\"; } );\n"
             "pools = ( { name = \"lab\"; desktop_prefix = \"lab\"; gold = \"%s\";\n"
             "  datastore = \"local\"; size = 2; spares = 1; domain = { %s }; } );\n",
             dir, "/x.qcow2", domain);
    vdi_config_options o = { .skip_filesystem_checks = true };
    vdi_config_errors *errs = NULL;
    int rc = vdi_config_parse_string(conf, "t.conf", &o, &config, &errs);
    ck_assert_msg(rc == 0, "%s", errs ? vdi_config_errors_get(errs, 0)->message : "");
    return vdi_config_find_pool(config, "lab");
}

static domain_spec spec(void)
{
    return (domain_spec){ .name = "lab-001",
                          .child = th_path(dir, "lab-001 & 'x'.qcow2"),
                          .gold = gold,
                          .gold_hash_hex = "00ff",
                          .slot = 1 };
}

/* libvirt's test driver accepts the XML (it parses and checks it). */
static void libvirt_accepts(const char *xml)
{
    virConnectPtr conn = virConnectOpen("test:///default");
    ck_assert_ptr_nonnull(conn);
    virDomainPtr dom = virDomainDefineXML(conn, xml);
    virErrorPtr e = virGetLastError();
    ck_assert_msg(dom != NULL, "libvirt refused the XML: %s\n%s",
                  e && e->message ? e->message : "?", xml);
    virDomainUndefine(dom);
    virDomainFree(dom);
    virConnectClose(conn);
}

START_TEST(built_in_domain)
{
    const vdi_pool_config *pc =
        pool_with("memory = \"64M\"; vcpus = 2; accel = \"tcg\"; graphics = \"vnc\";");
    domain_spec s = spec();
    vdi_error err = { 0 };
    char *xml = domain_xml_build(pc, &s, &err);
    ck_assert_msg(xml != NULL, "%s", err.message);
    ck_assert_ptr_nonnull(strstr(xml, "<domain type='qemu'>"));
    ck_assert_ptr_nonnull(strstr(xml, "<name>lab-001</name>"));
    ck_assert_ptr_nonnull(strstr(xml, "<memory unit='KiB'>65536</memory>"));
    ck_assert_ptr_nonnull(strstr(xml, "<vcpu>2</vcpu>"));
    ck_assert_ptr_nonnull(strstr(xml, "<features><acpi/></features>"));
    ck_assert_ptr_nonnull(strstr(xml, "error_policy='stop'"));
    /* Every quote, ampersand and bracket in a path is escaped. */
    ck_assert_ptr_nonnull(strstr(xml, "lab-001 &amp; &apos;x&apos;.qcow2"));
    ck_assert_ptr_nonnull(strstr(xml, "gold&apos;s &amp; &lt;gold&gt;.qcow2"));
    ck_assert_ptr_null(strstr(xml, "<gold>"));
    /* The gold is named with its format and libvirt's relabelling off. */
    ck_assert_ptr_nonnull(strstr(xml, "<format type='qcow2'/>"));
    ck_assert_ptr_nonnull(strstr(xml, "<seclabel model='dac' relabel='no'/>"));
    ck_assert_ptr_nonnull(strstr(xml, "<vdipool:slot>1</vdipool:slot>"));
    ck_assert_ptr_nonnull(strstr(xml, "<vdipool:gold-sha256>00ff</vdipool:gold-sha256>"));
    ck_assert_ptr_nonnull(strstr(xml, "<graphics type='vnc'"));
    libvirt_accepts(xml);
    free(xml);
}
END_TEST

START_TEST(template_is_filled)
{
    char tpl[4300];
    snprintf(tpl, sizeof tpl, "%s/tpl.xml", dir);
    const char *tpl_text =
        "<domain type='{{type}}'><name>{{name}}</name>{{metadata}}"
        "<memory unit='KiB'>{{memory_kib}}</memory><vcpu>{{vcpus}}</vcpu>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>{{disk}}</devices>"
        "<description>{{unknown}}</description></domain>";
    th_write_file(tpl, tpl_text, strlen(tpl_text));
    char domain[4500];
    snprintf(domain, sizeof domain, "memory = \"32M\"; template = \"%s\";", tpl);
    const vdi_pool_config *pc = pool_with(domain);
    domain_spec s = spec();
    vdi_error err = { 0 };
    char *xml = domain_xml_build(pc, &s, &err);
    ck_assert_msg(xml != NULL, "%s", err.message);
    ck_assert_ptr_nonnull(strstr(xml, "<name>lab-001</name>"));
    ck_assert_ptr_nonnull(strstr(xml, "<memory unit='KiB'>32768</memory>"));
    ck_assert_ptr_nonnull(strstr(xml, "<vdipool:pool>lab</vdipool:pool>"));
    ck_assert_ptr_nonnull(strstr(xml, "<target dev='vda' bus='virtio'/>"));
    ck_assert_ptr_nonnull(strstr(xml, "{{unknown}}")); /* left as written */
    free(xml);
}
END_TEST

START_TEST(refusals_name_the_file)
{
    const vdi_pool_config *pc = pool_with("template = \"/nonexistent/tpl.xml\";");
    domain_spec s = spec();
    vdi_error err = { 0 };
    ck_assert_ptr_null(domain_xml_build(pc, &s, &err));
    ck_assert_ptr_nonnull(strstr(err.message, "/nonexistent/tpl.xml"));
    s.gold = "/nonexistent/gold.qcow2";
    ck_assert_ptr_null(domain_xml_build(pc, &s, &err));
    ck_assert_ptr_nonnull(strstr(err.message, "/nonexistent/gold.qcow2"));
}
END_TEST

/* A resumed desktop's XML: a template's XML (as libvirt writes it into a
 * save image, metadata and all) with the desktop's name, UUID, metadata and
 * disk chain (its child over the template child over the gold). */
START_TEST(resumed_desktop_xml)
{
    const vdi_pool_config *pc =
        pool_with("memory = \"64M\"; vcpus = 1; accel = \"tcg\"; graphics = \"vnc\";");
    domain_spec t = spec();
    t.name = "lab-template-1";
    t.child = "/ds/lab-template-1.qcow2";
    t.slot = 0;
    t.no_network = true;
    vdi_error err = { 0 };
    char *saved = domain_xml_build(pc, &t, &err);
    ck_assert_msg(saved != NULL, "%s", err.message);
    /* libvirt's saved XML carries a uuid after the name. */
    char *with_uuid = NULL;
    const char *after_name = strstr(saved, "</name>") + strlen("</name>");
    ck_assert_int_gt(asprintf(&with_uuid, "%.*s\n  <uuid>0f0e0d0c-0000-4000-8000-000000000001</uuid>%s",
                              (int)(after_name - saved), saved, after_name),
                     0);
    domain_spec d = spec();
    d.child = "/ds/lab-002.qcow2";
    d.name = "lab-002";
    d.slot = 2;
    char *xml = resume_domain_xml(with_uuid, pc, &d, t.child,
                                  "11111111-2222-4333-8444-555555555555", &err);
    ck_assert_msg(xml != NULL, "%s", err.message);
    ck_assert_ptr_nonnull(strstr(xml, "<name>lab-002</name>"));
    ck_assert_ptr_nonnull(strstr(xml, "<uuid>11111111-2222-4333-8444-555555555555</uuid>"));
    ck_assert_ptr_null(strstr(xml, "lab-template-1</name>"));
    ck_assert_ptr_nonnull(strstr(xml, "<vdipool:slot>2</vdipool:slot>"));
    ck_assert_ptr_null(strstr(xml, "<vdipool:slot>0</vdipool:slot>"));
    ck_assert_ptr_nonnull(strstr(xml, "<source file='/ds/lab-002.qcow2'/>"));
    const char *tmpl = strstr(xml, "<source file='/ds/lab-template-1.qcow2'>");
    ck_assert_ptr_nonnull(tmpl);
    ck_assert_ptr_nonnull(strstr(tmpl, "gold&apos;s &amp; &lt;gold&gt;.qcow2"));
    libvirt_accepts(xml);
    /* One metadata element, and no interface. */
    ck_assert_ptr_null(strstr(strstr(xml, "</metadata>") + 1, "<metadata>"));
    ck_assert_ptr_null(strstr(xml, "<interface"));
    free(xml);
    free(with_uuid);
    free(saved);
}
END_TEST

TH_MAIN("domain_xml", { "domain_xml", setup, teardown, 60,
                        { built_in_domain, template_is_filled, refusals_name_the_file,
                          resumed_desktop_xml, NULL } })
