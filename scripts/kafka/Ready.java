// Readiness probe of the test broker: polls a metadata request (describeCluster) until the
// broker answers with at least one node, or the deadline passes. Exit 0 ready, 1 not.
// Run with the broker's own jars: java -cp 'vendor/kafka/lib/*' scripts/kafka/Ready.java HOST:PORT SECONDS
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;

public class Ready {
    public static void main(String[] args) throws Exception {
        String brokers = args[0];
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[1]));
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "2000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "2000");
        props.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "500");
        try (Admin admin = Admin.create(props)) {
            while (System.nanoTime() < deadline) {
                try {
                    int nodes = admin.describeCluster().nodes().get(2, TimeUnit.SECONDS).size();
                    if (nodes > 0) {
                        System.out.println("broker " + brokers + " ready (" + nodes + " node)");
                        System.exit(0);
                    }
                } catch (Exception e) {
                    // Not up yet: try again shortly.
                }
                Thread.sleep(250);
            }
        }
        System.err.println("broker " + brokers + " did not answer a metadata request in time");
        System.exit(1);
    }
}
