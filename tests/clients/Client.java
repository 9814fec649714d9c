// GET each URL and print the answers, through the proxy the JVM's system properties name (http.proxyHost and
// http.proxyPort, https.proxyHost and https.proxyPort), trusting the javax.net.ssl.trustStore given.
// Usage: java Client.java URL...   (Java 11 and later run a single source file as it is)
import java.net.ProxySelector;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;

public class Client {
    public static void main(String[] args) throws Exception {
        // The default selector is the one that reads those properties (and http.nonProxyHosts).
        HttpClient client = HttpClient.newBuilder().proxy(ProxySelector.getDefault()).build();
        for (String url : args) {
            HttpRequest request = HttpRequest.newBuilder(URI.create(url)).build();
            HttpResponse<String> response = client.send(request, HttpResponse.BodyHandlers.ofString());
            System.out.print(response.body());
            if (response.statusCode() != 200) {
                System.err.println(url + ": HTTP " + response.statusCode());
                System.exit(1);
            }
        }
    }
}
